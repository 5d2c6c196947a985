"""Training: one LightFM fit over a training window, features included.

`prepare` builds everything LightFM needs from the window's events (the weighted interaction
matrix, the feature matrices with identity features first, the feature names in column
order); `fit` runs the epochs one `fit_partial` at a time so that a progress callback can
follow them (the same arithmetic as `fit(epochs=n)`: fit resets the state, then loops).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from .data import Events, Interactions, interaction_matrix
from .features import (ItemInfo, feature_matrix, item_activity_features, item_feature_names, user_features,
                       vocabulary)


@dataclass(frozen=True)
class ModelParams:
    no_components: int = 64
    loss: str = "warp"
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    epochs: int = 20
    num_threads: int = 2
    random_state: int = 42


@dataclass(frozen=True)
class MatrixParams:
    type_weights: dict
    channel_weights: dict
    half_life_days: float
    aggregate: str
    user_identity: bool = True
    item_identity: bool = True
    user_feature_share: float | None = None
    item_feature_share: float | None = None
    item_activity: bool = True


@dataclass
class TrainingData:
    """One window, ready for LightFM. Rows of `user_features` follow `interactions.users`,
    columns are [identity features | `user_feature_names`]; the same for items."""
    events: Events
    end: float
    interactions: Interactions
    user_ids: list[str]
    item_ids: list[str]
    user_feature_names: list[str]
    item_feature_names: list[str]
    user_feature_lists: list[list[str]]
    item_feature_lists: list[list[str]]
    user_features: sp.csr_matrix
    item_features: sp.csr_matrix
    user_identity: bool
    item_identity: bool
    user_learned: np.ndarray | None = None   # bool per customer: has an identity feature (None: all)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def learned_mask(self) -> np.ndarray:
        return np.ones(self.n_users, bool) if self.user_learned is None else self.user_learned

    @property
    def n_user_identity(self) -> int:
        """How many identity columns the user feature matrix starts with."""
        return int(self.learned_mask.sum()) if self.user_identity else 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def prepare(events: Events, end: float, info: dict[str, ItemInfo], p: MatrixParams,
            learned: Collection[str] | None = None) -> TrainingData:
    """`learned`: the customers who may have a learned row (personalisation consent); the others
    have no identity feature, only their named features, as a cold customer in serving."""
    inter = interaction_matrix(events, type_weights=p.type_weights, channel_weights=p.channel_weights, end=end,
                               half_life_days=p.half_life_days, aggregate=p.aggregate)
    if inter.weights.nnz == 0:
        from .data import DataError

        raise DataError("no positive interaction in the training window (purchases net of returns)")
    user_ids = [events.user_ids[u] for u in inter.users]
    item_ids = [events.item_ids[i] for i in inter.items]
    ufl = user_features(events, inter.users, end)
    ifl = [item_feature_names(info.get(i)) for i in item_ids]
    if p.item_activity:
        ifl = [a + b for a, b in zip(ifl, item_activity_features(events, inter.items, end))]
    un, inn = vocabulary(ufl), vocabulary(ifl)
    mask = None if learned is None else np.fromiter((u in learned for u in user_ids), bool, len(user_ids))
    return TrainingData(events, end, inter, user_ids, item_ids, un, inn, ufl, ifl,
                        feature_matrix(ufl, un, identity=p.user_identity, feature_share=p.user_feature_share,
                                       identity_rows=mask),
                        feature_matrix(ifl, inn, identity=p.item_identity, feature_share=p.item_feature_share),
                        p.user_identity, p.item_identity, mask)


def fit(data: TrainingData, p: ModelParams, progress: Callable[[int, int], None] | None = None) -> LightFM:
    model = LightFM(no_components=p.no_components, loss=p.loss, learning_rate=p.learning_rate,
                    item_alpha=p.item_alpha, user_alpha=p.user_alpha, max_sampled=p.max_sampled,
                    random_state=np.random.RandomState(p.random_state))
    w = data.interactions.weights
    ones = sp.coo_matrix((np.ones_like(w.data), (w.row, w.col)), shape=w.shape)
    for epoch in range(p.epochs):
        model.fit_partial(ones, user_features=data.user_features, item_features=data.item_features,
                          sample_weight=w, epochs=1, num_threads=p.num_threads)
        if progress:
            progress(epoch + 1, p.epochs)
    return model
