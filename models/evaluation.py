"""Evaluation: ranking metrics over a time split, for the model as serving scores it and for
the baselines it has to beat, all computed the same way.

Scorers produce a (customers × candidate items) score matrix:

    lightfm     the artifact's `model_scores` (kernel), i.e. exactly LightFM.predict
    blended     kernel `blend` of the standardised model score and `repeat_signal`
    popularity  global popularity, the issue's baseline: distinct customers who bought the item
                over the whole training window
    popularity_recent  a stronger peer: distinct buyers in the `popularity_days` before the
                window (ties: the global count); what serving's popularity fallback uses
    repeat      "popular among what the customer bought before": the items the customer
                bought in training, by global popularity, then every other item by it
    repeat_recent  the same with recent popularity
    repeat_count  the strongest peer: the customer's own purchase count of the item in training
                first, recent popularity breaking ties and ordering the rest

Metrics at k, averaged over customers (each customer counts once): precision (hits / k),
recall (hits / items bought in the window), NDCG (binary gains, log2 discount, normalised by
the ideal ranking of min(bought, k) hits), AUC (probability that a bought item outranks one
not bought, ties counting half) and catalogue coverage (distinct items in all top-k lists /
candidate items). "new" excludes, per customer, the items they bought in training: from the
ranking, from the truth and from the AUC's negatives; customers left with no truth drop out.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from vicino.services.kernel.contracts.model_artifact import Blend, ModelArtifact, blend, model_scores, repeat_signal

from .data import DAY_S, PURCHASE_TYPES, Events
from .split import EvalSet

SCORERS = ("lightfm", "blended", "popularity", "popularity_recent", "repeat", "repeat_recent", "repeat_count")
# No window is long enough to reach back before the data: "every purchase in training".
GLOBAL_DAYS = 1e9


# ------------------------------------------------------------------------------------------------
# Metrics

CURVE_KS = (1, 2, 3, 5, 10, 15, 20)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the k highest scores, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _prepare(scores: np.ndarray, truth: sp.csr_matrix, exclude: sp.csr_matrix | None):
    s = np.array(scores, dtype=np.float64)
    t = truth.toarray().astype(bool)
    ex = None
    if exclude is not None:
        ex = exclude.toarray().astype(bool)
        t &= ~ex
        s[ex] = -np.inf
    keep = t.any(axis=1)
    return s[keep], t[keep], (ex[keep] if ex is not None else None)


def precision_at_k(scores: np.ndarray, truth: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None = None) -> float:
    s, t, _ = _prepare(scores, truth, exclude)
    if not len(s):
        return 0.0
    hits = np.take_along_axis(t, top_k(s, k), axis=1)
    return float(hits.sum(axis=1).mean() / k)


def ranking_metrics(scores: np.ndarray, truth: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None = None) -> dict:
    """precision, recall, ndcg at k, auc, coverage and the number of customers evaluated."""
    s, t, ex = _prepare(scores, truth, exclude)
    n_users, n_items = s.shape
    if n_users == 0:
        return {"precision": None, "recall": None, "ndcg": None, "auc": None, "coverage": None, "users": 0}
    top = top_k(s, k)
    hits = np.take_along_axis(t, top, axis=1)
    n_pos = t.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    dcg = (hits * discount).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_pos, top.shape[1]) - 1]
    n_ex = ex.sum(axis=1) if ex is not None else np.zeros(n_users, np.int64)
    n_neg = n_items - n_ex - n_pos
    ranks = rankdata(s, axis=1, method="average")        # excluded items: −inf, the lowest ranks
    pos_rank_sum = np.where(t, ranks, 0.0).sum(axis=1) - n_ex * n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc = auc[n_neg > 0]
    return {"precision": float(hits.sum(axis=1).mean() / k), "recall": float((hits.sum(axis=1) / n_pos).mean()),
            "ndcg": float((dcg / ideal).mean()), "auc": float(auc.mean()) if len(auc) else None,
            "coverage": float(len(np.unique(top)) / n_items), "users": int(n_users)}


# ------------------------------------------------------------------------------------------------
# Scorers

def item_features_for(art: ModelArtifact, item_ids: list[str]) -> list[list[str]]:
    return [art.manifest.item_feature_map.get(i, []) for i in item_ids]


def model_matrix(art: ModelArtifact, ev: EvalSet) -> np.ndarray:
    """The kernel's model score of every candidate for every customer, as serving computes it."""
    reprs, bias, _ = art.items(ev.item_ids, item_features_for(art, ev.item_ids))
    out = np.empty((ev.n_users, len(ev.item_ids)), np.float32)
    for r, customer in enumerate(ev.user_ids):
        u, b, _ = art.user(customer)
        out[r] = model_scores(u, b, reprs, bias)
    return out


def repeat_matrix(ev: EvalSet, half_life_days: float) -> np.ndarray:
    """The kernel's repeat signal (items never bought score 0, as repeat_signal gives them)."""
    out = np.zeros((ev.n_users, len(ev.item_ids)), np.float32)
    for r, ages in enumerate(ev.purchase_ages):
        if ages:
            cols = list(ages)
            out[r, cols] = repeat_signal([ages[c] for c in cols], half_life_days)
    return out


def blended_matrix(model: np.ndarray, repeat: np.ndarray, b: Blend) -> np.ndarray:
    out = np.empty_like(model)
    for r in range(model.shape[0]):
        out[r] = blend(model[r], repeat[r], b)
    return out


def popularity(train: Events, item_codes: np.ndarray, at: float, days: float) -> np.ndarray:
    """Per candidate item (global codes): distinct customers who bought it in the `days` before
    `at`, plus a tie-break < 1 from the distinct customers over all of `train`."""
    m = train.is_type(*PURCHASE_TYPES) & (train.item >= 0)

    def distinct(mask: np.ndarray) -> np.ndarray:
        pairs = np.unique(np.stack([train.item[mask].astype(np.int64), train.user[mask].astype(np.int64)]), axis=1) \
            if mask.any() else np.zeros((2, 0), np.int64)
        return np.bincount(pairs[0], minlength=len(train.item_ids)).astype(np.float64)

    recent = distinct(m & (train.ts >= at - days * DAY_S))
    ever = distinct(m)
    return (recent + ever / (ever.max() + 1.0))[item_codes]


def repeat_baseline(ev: EvalSet, pop: np.ndarray, *, by_count: bool = False) -> np.ndarray:
    """Items the customer bought before first (by popularity; with `by_count`, by how many
    times they bought each, popularity breaking ties), then the rest by popularity."""
    tie = (pop / (pop.max() + 1.0)).astype(np.float64)
    out = np.tile(tie, (ev.n_users, 1))
    for r, ages in enumerate(ev.purchase_ages):
        for c, a in ages.items():
            out[r, c] += len(a) if by_count else 1.0
    return out


# ------------------------------------------------------------------------------------------------
# Putting it together

def tune_blend(model: np.ndarray, ev: EvalSet, *, mean: float, std: float, weights: tuple[float, ...],
               half_lives: tuple[float, ...], k: int) -> tuple[Blend, list[dict]]:
    """The (repeat_weight, half_life) of the grid with the best precision@k on all items
    (ties: the smaller weight, then the shorter half-life); and every point tried."""
    tried = []
    best = None
    for h in sorted(half_lives):
        rep = repeat_matrix(ev, h)
        for w in sorted(weights):
            b = Blend(mean, std, float(w), float(h))
            p = precision_at_k(blended_matrix(model, rep, b), ev.truth, k)
            tried.append({"repeat_weight": w, "half_life_days": h, "precision": round(p, 5)})
            if best is None or p > best[0] + 1e-12 or (abs(p - best[0]) <= 1e-12 and w < best[1].repeat_weight):
                best = (p, b)
    return best[1], tried


def evaluate(art: ModelArtifact, ev: EvalSet, train: Events, b: Blend, *, k: int, popularity_days: float,
             model: np.ndarray | None = None) -> dict:
    """Every scorer on all items and on items new to each customer."""
    if ev.n_users == 0:
        return {"users": 0, "all": {}, "new": {}}
    model = model_matrix(art, ev) if model is None else model
    index = {item: n for n, item in enumerate(train.item_ids)}
    codes = np.array([index[i] for i in ev.item_ids], np.int64)
    pop = popularity(train, codes, ev.at, GLOBAL_DAYS)
    recent = popularity(train, codes, ev.at, popularity_days)
    scores = {"lightfm": model, "blended": blended_matrix(model, repeat_matrix(ev, b.half_life_days), b),
              "popularity": np.tile(pop, (ev.n_users, 1)), "popularity_recent": np.tile(recent, (ev.n_users, 1)),
              "repeat": repeat_baseline(ev, pop), "repeat_recent": repeat_baseline(ev, recent),
              "repeat_count": repeat_baseline(ev, recent, by_count=True)}
    out: dict = {"users": ev.n_users, "k": k, "all": {}, "new": {}}
    for name in SCORERS:
        out["all"][name] = ranking_metrics(scores[name], ev.truth, k)
        out["new"][name] = ranking_metrics(scores[name], ev.truth, k, exclude=ev.bought)
    # precision at several cut-offs (all items), for the precision@k-per-k plot of the notebook
    ks = [c for c in CURVE_KS if c <= len(ev.item_ids)]
    out["precision_at"] = {name: {str(c): precision_at_k(scores[name], ev.truth, c) for c in ks} for name in SCORERS}
    return out
