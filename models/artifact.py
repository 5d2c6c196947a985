"""Artifact: a fitted model turned into the pickle-free arrays and manifest of
services/kernel/contracts/model_artifact.py, the only form in which serving sees a model.

Known customers and items get LightFM's own representations (`get_user_representations` over
their feature rows: identity plus features, normalised). For the cold start, the per-feature
rows are the embeddings of the non-identity features: with identity features LightFM numbers
them after the n identity columns, so feature j is row `n + j` of `user_embeddings`, in
Manifest.user_features order. The kernel averages them, which is what LightFM computes for a
feature row holding only those features, normalised.
"""
from __future__ import annotations

import datetime as dt
import secrets
import time
from pathlib import Path

import numpy as np
from lightfm import LightFM

from vicino.services.kernel.contracts.model_artifact import (Blend, Manifest, ModelArtifact, publish, read_version,
                                                      write_version)

from .training import TrainingData


def export_arrays(model: LightFM, data: TrainingData) -> dict[str, np.ndarray]:
    user_bias, user_repr = model.get_user_representations(data.user_features)
    item_bias, item_repr = model.get_item_representations(data.item_features)
    learned = data.learned_mask   # customers without personalisation consent get no row
    user_bias, user_repr = user_bias[learned], user_repr[learned]
    uo = data.n_user_identity
    io = data.n_items if data.item_identity else 0
    nu, ni = len(data.user_feature_names), len(data.item_feature_names)
    return {
        "user_repr": np.asarray(user_repr, np.float32), "user_bias": np.asarray(user_bias, np.float32),
        "item_repr": np.asarray(item_repr, np.float32), "item_bias": np.asarray(item_bias, np.float32),
        "user_feature_emb": np.asarray(model.user_embeddings[uo:uo + nu], np.float32),
        "user_feature_bias": np.asarray(model.user_biases[uo:uo + nu], np.float32),
        "item_feature_emb": np.asarray(model.item_embeddings[io:io + ni], np.float32),
        "item_feature_bias": np.asarray(model.item_biases[io:io + ni], np.float32),
    }


def new_version_name(now: float | None = None) -> str:
    """Sortable by creation time, unique: 20261126T130123Z-3fa9c1."""
    t = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return f"{t.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def build_manifest(data: TrainingData, *, version: str, data_window: dict, settings: dict, metrics: dict,
                   item_feature_map: dict[str, list[str]], popular_items: list[str], blend: Blend,
                   erasures_as_of: float = 0.0) -> Manifest:
    learned = data.learned_mask
    return Manifest(version=version, created_at=time.time(), data_window=data_window, settings=settings,
                    metrics=metrics, user_ids=[u for u, ok in zip(data.user_ids, learned) if ok],
                    item_ids=list(data.item_ids), erasures_as_of=erasures_as_of,
                    user_features=list(data.user_feature_names), item_features=list(data.item_feature_names),
                    item_feature_map=item_feature_map, popular_items=popular_items, blend=blend)


def in_memory(manifest: Manifest, arrays: dict[str, np.ndarray]) -> ModelArtifact:
    """The artifact serving would load, without the files: what evaluation scores through."""
    return ModelArtifact(manifest, {k: np.asarray(v, np.float32) for k, v in arrays.items()})


def score_stats(art: ModelArtifact, max_users: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the model's scores over (known customers × items), on a
    fixed sample of customers: the blend's standardisation."""
    n = len(art.manifest.user_ids)
    if n == 0:  # no customer with a learned row (nobody consented): nothing to standardise against
        return 0.0, 1.0
    rows = np.arange(n) if n <= max_users else np.sort(np.random.default_rng(seed).choice(n, max_users, False))
    s = art.user_repr[rows] @ art.item_repr.T + art.user_bias[rows, None] + art.item_bias[None, :]
    return float(s.mean()), float(s.std())


def write(model_dir: str | Path, manifest: Manifest, arrays: dict[str, np.ndarray]) -> Path:
    return write_version(model_dir, manifest, arrays)


__all__ = ["export_arrays", "new_version_name", "build_manifest", "in_memory", "score_stats", "write", "publish",
           "read_version"]
