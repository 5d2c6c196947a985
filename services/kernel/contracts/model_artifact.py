"""The model artifact: what training (`models/`) publishes and the recommender loads and scores.

A version is a directory under the model root:

    <root>/<version>/arrays.npz      float32 arrays, loaded with allow_pickle=False:
        user_repr (U×k), user_bias (U)      known customers (LightFM's user representations,
                                            identity plus features, as `get_user_representations`)
        item_repr (I×k), item_bias (I)      known items, the same way
        user_feature_emb (UF×k), user_feature_bias (UF)   per feature, for customers never seen
        item_feature_emb (IF×k), item_feature_bias (IF)   per feature, for items never seen
    <root>/<version>/manifest.json   see `Manifest`
    <root>/CURRENT                   the published version's name, replaced atomically

Versions are kept (the newest `keep`, and always the published one; `prune_versions`) so that an
operator can roll back. An erased customer leaves every kept version (`scrub_version`): their id
becomes a null in `Manifest.user_ids` and their row zeros, rewritten in place file by file (the
manifest first: a reader sees the old or the new file, each loadable, and after the manifest
no version maps the id); `version_stamp` tells a replica that the files changed.

A customer's score for an item is `user_repr·item_repr + user_bias + item_bias`, exactly what
`LightFM.predict` computes from the same representations. For a customer or an item without a
row, the representation is the mean of its features' embeddings (and biases): LightFM's
normalised feature rows, without the identity feature. The final ranking blends the model's
score, standardised with the training run's statistics, with the customer's own purchase
recency and frequency (`blend`): on retail data customers re-buy a lot, and the blend is what
beats the repeat-purchase baseline. Pure numpy; serving never imports LightFM.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .erasures import erased_at_in

SCHEMA_VERSION = 1
CURRENT = "CURRENT"
# An erasure recorded this long before training read the register may still have been in flight
# (its time is taken before it is written): such a customer's row is treated as learned before it.
ERASURE_MARGIN_S = 60.0
ARRAYS = ("user_repr", "user_bias", "item_repr", "item_bias", "user_feature_emb", "user_feature_bias",
          "item_feature_emb", "item_feature_bias")


class ArtifactError(Exception):
    """The artifact is missing, truncated or inconsistent; the message says what."""


@dataclass(frozen=True)
class Blend:
    """score = (model − mean) / std + repeat_weight × Σ exp(−age_days / half_life_days) over the
    customer's purchases of the item."""
    score_mean: float = 0.0
    score_std: float = 1.0
    repeat_weight: float = 0.0
    half_life_days: float = 30.0


@dataclass(frozen=True)
class Manifest:
    version: str
    created_at: float
    data_window: dict                      # {"start": epoch s, "end": epoch s, "rows": n}
    settings: dict                         # training settings (weights, decay, epochs, ...)
    metrics: dict                          # evaluation: model and baselines
    user_ids: list[str | None]             # null: a customer erased since training (row zeroed)
    item_ids: list[str]
    user_features: list[str]               # names, in user_feature_emb row order
    item_features: list[str]
    item_feature_map: dict[str, list[str]] = field(default_factory=dict)  # item id -> its feature names
    popular_items: list[str] = field(default_factory=list)               # most popular first
    blend: Blend = field(default_factory=Blend)
    erasures_as_of: float = 0.0            # when training read the erasure register (0: it did not)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        try:
            d = json.loads(raw)
            if d.get("schema_version") != SCHEMA_VERSION:
                raise ArtifactError(f"manifest schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            d["blend"] = Blend(**d.get("blend", {}))
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"manifest is not valid: {e}") from None


class ModelArtifact:
    """One loaded version: arrays, id maps and the scoring arithmetic."""

    def __init__(self, manifest: Manifest, arrays: dict[str, np.ndarray]) -> None:
        self.manifest = manifest
        self.version = manifest.version
        for name in ARRAYS:
            setattr(self, name, arrays[name])
        self.user_index = {u: n for n, u in enumerate(manifest.user_ids) if u is not None}
        self.item_index = {i: n for n, i in enumerate(manifest.item_ids)}
        self.user_feature_index = {f: n for n, f in enumerate(manifest.user_features)}
        self.item_feature_index = {f: n for n, f in enumerate(manifest.item_features)}
        self._check()

    def _check(self) -> None:
        m = self.manifest
        k = self.item_repr.shape[1] if self.item_repr.ndim == 2 else -1
        expect = {"user_repr": (len(m.user_ids), k), "user_bias": (len(m.user_ids),),
                  "item_repr": (len(m.item_ids), k), "item_bias": (len(m.item_ids),),
                  "user_feature_emb": (len(m.user_features), k), "user_feature_bias": (len(m.user_features),),
                  "item_feature_emb": (len(m.item_features), k), "item_feature_bias": (len(m.item_features),)}
        for name, shape in expect.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ArtifactError(f"{name} has shape {got}, the manifest implies {shape}")
            if not np.all(np.isfinite(getattr(self, name))):
                raise ArtifactError(f"{name} holds NaN or infinite values")

    def learned_after(self, erased_at: float) -> bool:
        """True when this version was trained without the rows of an erasure at `erased_at` (the
        register it read already held it), so a row of that id is learned from later data only."""
        return self.manifest.erasures_as_of - ERASURE_MARGIN_S > erased_at

    # representations -------------------------------------------------------------------------

    def user(self, customer_id: str | None, features: list[str] = ()) -> tuple[np.ndarray, float, bool]:
        """(representation, bias, known): the learned row of a known customer, else the mean of
        the embeddings of their known features (zero when none is known)."""
        row = self.user_index.get(customer_id) if customer_id is not None else None
        if row is not None:
            return self.user_repr[row], float(self.user_bias[row]), True
        rows = [self.user_feature_index[f] for f in features if f in self.user_feature_index]
        if not rows:
            return np.zeros(self.user_repr.shape[1], np.float32), 0.0, False
        return (self.user_feature_emb[rows].mean(axis=0), float(self.user_feature_bias[rows].mean()), False)

    def items(self, item_ids: list[str], features: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(representations n×k, biases n, known mask n) for items given with their features;
        an item without a learned row is represented by the mean of its known features."""
        n = len(item_ids)
        reprs = np.zeros((n, self.item_repr.shape[1]), np.float32)
        bias = np.zeros(n, np.float32)
        known = np.zeros(n, bool)
        rows = [self.item_index.get(i) for i in item_ids]
        hit = [p for p, r in enumerate(rows) if r is not None]
        if hit:
            idx = [rows[p] for p in hit]
            reprs[hit] = self.item_repr[idx]
            bias[hit] = self.item_bias[idx]
            known[hit] = True
        # the unseen ones: the mean of their known features' rows, gathered in one pass
        pos: list[int] = []
        feat: list[int] = []
        weight: list[float] = []
        for p, r in enumerate(rows):
            if r is None:
                fr = [self.item_feature_index[f] for f in features[p] if f in self.item_feature_index]
                pos += [p] * len(fr)
                feat += fr
                weight += [1.0 / len(fr)] * len(fr)
        if pos:
            w = np.asarray(weight, np.float32)
            np.add.at(reprs, np.asarray(pos), self.item_feature_emb[feat] * w[:, None])
            np.add.at(bias, np.asarray(pos), self.item_feature_bias[feat] * w)
        return reprs, bias, known


def model_scores(user_repr: np.ndarray, user_bias: float, item_repr: np.ndarray, item_bias: np.ndarray) -> np.ndarray:
    """LightFM's prediction for one customer over many items."""
    return item_repr @ user_repr + item_bias + user_bias


def repeat_signal(purchase_ages_days: list[list[float]], half_life_days: float) -> np.ndarray:
    """Per item: Σ exp(−age/half_life) over the customer's purchases of it (0 when none)."""
    lam = math.log(2) / half_life_days
    return np.array([sum(math.exp(-lam * max(a, 0.0)) for a in ages) for ages in purchase_ages_days], np.float32)


def blend(scores: np.ndarray, repeat: np.ndarray, b: Blend) -> np.ndarray:
    std = b.score_std if b.score_std > 0 else 1.0
    return (scores - b.score_mean) / std + b.repeat_weight * repeat


# files -------------------------------------------------------------------------------------------

def write_version(root: str | Path, manifest: Manifest, arrays: dict[str, np.ndarray]) -> Path:
    """Writes a version directory whole or not at all (a temporary directory renamed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    missing = set(ARRAYS) - arrays.keys()
    if missing:
        raise ArtifactError(f"arrays missing: {sorted(missing)}")
    final = root / manifest.version
    if final.exists():
        raise ArtifactError(f"version {manifest.version!r} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.version}.", dir=root))
    try:
        np.savez(tmp / "arrays.npz", **{k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in ARRAYS})
        (tmp / "manifest.json").write_bytes(manifest.to_json())
        ModelArtifact(manifest, {k: np.asarray(arrays[k], np.float32) for k in ARRAYS})  # refuse what won't load
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def publish(root: str | Path, version: str) -> None:
    """Points CURRENT at `version` atomically (readers see the old or the new name, never half)."""
    root = Path(root)
    if not (root / version / "manifest.json").exists():
        raise ArtifactError(f"no version {version!r} under {root}")
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT.", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT)


def current_version(root: str | Path) -> str | None:
    try:
        name = (Path(root) / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def read_version(root: str | Path, version: str) -> ModelArtifact:
    path = Path(root) / version
    try:
        manifest = Manifest.from_json((path / "manifest.json").read_bytes())
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k], np.float32) for k in ARRAYS}
    except ArtifactError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # missing, truncated, not a zip
        raise ArtifactError(f"version {version!r} cannot be read: {type(e).__name__}: {e}") from None
    if manifest.version != version:
        raise ArtifactError(f"directory {version!r} holds a manifest of version {manifest.version!r}")
    return ModelArtifact(manifest, arrays)


# the registry: kept versions, pruning, erasure -------------------------------------------------

def list_versions(root: str | Path) -> list[str]:
    """The version directories under `root`, oldest first (names sort by creation time)."""
    try:
        entries = list(Path(root).iterdir())
    except FileNotFoundError:
        return []
    return sorted(p.name for p in entries if not p.name.startswith(".") and (p / "manifest.json").is_file())


def read_manifest(root: str | Path, version: str) -> Manifest:
    """A version's manifest alone (the registry's listing), without its arrays."""
    try:
        return Manifest.from_json((Path(root) / version / "manifest.json").read_bytes())
    except OSError as e:
        raise ArtifactError(f"version {version!r} cannot be read: {type(e).__name__}: {e}") from None


def version_stamp(root: str | Path, version: str) -> tuple[int, int] | None:
    """When the version's files last changed (a scrub rewrites them in place); None if missing."""
    path = Path(root) / version
    try:
        return (path / "manifest.json").stat().st_mtime_ns, (path / "arrays.npz").stat().st_mtime_ns
    except FileNotFoundError:
        return None


def prune_versions(root: str | Path, keep: int) -> list[str]:
    """Keeps `keep` versions, the published one and the newest others, and deletes the rest;
    returns the deleted names. A directory is renamed away first, so nothing ever sees half of one."""
    if keep < 1:
        raise ValueError("keep at least one version")
    root = Path(root)
    current = current_version(root)
    names = list_versions(root)
    others = [v for v in names if v != current]
    kept = set(others[len(others) - (keep - 1 if current in names else keep):]) | {current}
    doomed = [v for v in names if v not in kept]
    for v in doomed:
        trash = Path(tempfile.mkdtemp(prefix=f".pruned.{v}.", dir=root))
        os.replace(root / v, trash / v)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def _replace_file(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def scrub_version(root: str | Path, version: str, erased: Mapping[str, float], key: bytes) -> int:
    """Removes from one version every customer of `erased` (the erasure register: a digest keyed
    with `key` -> erased at) whose
    row was learned before the erasure: the id becomes null, the row zeros. Returns how many.
    The manifest is replaced first, then the arrays: each file is whole at every instant."""
    art = read_version(root, version)
    m = art.manifest
    gone = [n for n, u in enumerate(m.user_ids) if u is not None and (at := erased_at_in(erased, u, key)) is not None
            and not art.learned_after(float(at))]
    if not gone:
        return 0
    path = Path(root) / version
    ids = list(m.user_ids)
    for n in gone:
        ids[n] = None
    scrubbed = replace(m, user_ids=ids)
    _replace_file(path / "manifest.json", lambda f: f.write(scrubbed.to_json()))
    arrays = {k: np.array(getattr(art, k), np.float32) for k in ARRAYS}
    arrays["user_repr"][gone] = 0.0
    arrays["user_bias"][gone] = 0.0
    _replace_file(path / "arrays.npz", lambda f: np.savez(f, **arrays))
    return len(gone)
