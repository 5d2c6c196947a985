"""Ranking of eligible offers for one customer: pure, given the loaded model (or none), what the
customer bought and when, and their personalisation consent.

An offer is scored by its best item: known items from their learned representation, items the
model never saw from the mean of their features' embeddings (category, price band, brand), then
blended with the customer's own purchases of those items (`model_artifact.blend`). The channel
plays no part in the score, so a customer gets the same order on every channel (the channel only
decides which offers are eligible). Reasons:

- `model`: a customer the model knows, scored by the model.
- `cold_start_features`: a customer it does not know (scored from their features), or an offer
  none of whose items it knows (scored from the offer's features).
- `popular_fallback`: no personalisation consent, or no model loaded: by the items' popularity
  in the model's training window (then by the catalogue's priority and price).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from vicino.services.kernel.contracts.model_artifact import ModelArtifact, blend, model_scores, repeat_signal

from .offers import Offer, ranking_key

DAY_S = 86_400.0
_BAND = re.compile(r"^price:(?P<lo>[0-9.]+)-(?P<hi>[0-9.]+|inf)$")
_BAND_ANY = re.compile(r"^(?P<prefix>[a-z]+):(?P<lo>[0-9.]+)-(?P<hi>[0-9.]+|inf)$")
_SHARES = ("0-25", "25-50", "50-75", "75-100")


@dataclass(frozen=True, slots=True)
class RankedOffer:
    offer: Offer
    score: float
    reason: str

    # what a decision needs of the offer (use_cases.decide.RanksOffers' view of a ranked offer)
    @property
    def offer_id(self) -> str:
        return self.offer.offer_id

    @property
    def price(self) -> float:
        return self.offer.canonical_price

    @property
    def currency(self) -> str:
        return self.offer.currency

    @property
    def title(self) -> str:
        return self.offer.title

    @property
    def body(self) -> str:
        return self.offer.body

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(self.offer.item_ids)

    @property
    def regular_price(self) -> float:
        return self.offer.price

    @property
    def valid_to(self) -> float:
        return self.offer.valid_to


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What ranking knows of the customer: their id (canonical), personalisation consent, the
    features they would have in training (for cold start), and purchase times per item.
    `learned_row` False: the model's row of this id must not be used (the customer was erased
    after that row was learned, and the version is not scrubbed yet): scored as a cold customer."""
    customer_id: str
    personalisation: bool
    features: tuple[str, ...]
    purchases: dict[str, list[float]]  # item id -> epoch seconds of each purchase
    learned_row: bool = True


def _band_of(prefix: str, x: float, names: list[str]) -> str | None:
    """The model's own band feature (`prefix:lo-hi`, `prefix:lo-inf`) that holds `x`; bands below
    the first edge count as the first, as training does."""
    bands = []
    for name in names:
        m = _BAND_ANY.match(name)
        if m and m["prefix"] == prefix:
            bands.append((float(m["lo"]), math.inf if m["hi"] == "inf" else float(m["hi"]), name))
    bands.sort()
    for lo, hi, name in bands:
        if x < hi:
            return name
    return bands[-1][2] if bands else None


def customer_features(history: list[dict], now: float, model: ModelArtifact) -> list[str]:
    """A customer the model never saw, described in its vocabulary from their hot history: most
    frequent country, channel shares (quartiles), purchase frequency (distinct days) and recency
    (days since the last purchase), as training names them (models/features.py)."""
    names = model.manifest.user_features
    out: list[str] = []
    countries = [h["country"] for h in history if h.get("country")]
    if countries:
        out.append(f"country:{max(set(countries), key=countries.count)}")
    channels = [h["channel"] for h in history]
    for ch in sorted(set(channels)):
        share = channels.count(ch) / len(channels)
        out.append(f"channel:{ch}:{_SHARES[min(int(share * 4), 3)]}")
    bought = [h["ts"] for h in history if h["type"] in ("purchase", "click_and_collect")]
    freq = _band_of("freq", len({int(t // DAY_S) for t in bought}), names)
    if freq:
        out.append(freq)
    if bought:
        recency = _band_of("recency", max(now - max(bought), 0.0) / DAY_S, names)
        if recency:
            out.append(recency)
    return out


def offer_features(offer: Offer, model: ModelArtifact) -> list[str]:
    """The features an unseen offer has in the model's vocabulary: its category, its price band
    (bands read from the model's own feature names, so they always match training), its brands."""
    index = model.item_feature_index
    out = [f for f in (f"cat:{offer.category}", f"cat:{offer.category.upper()}") if f in index][:1]
    price = offer.canonical_price
    for lo, hi, name in _price_bands(model):
        if lo <= price < hi:
            out.append(name)
            break
    out += [f"brand:{b}" for b in (offer.brands or ()) if f"brand:{b}" in index]
    return out


_BANDS_OF: dict[int, list[tuple[float, float, str]]] = {}


def _price_bands(model: ModelArtifact) -> list[tuple[float, float, str]]:
    """The model's price bands, parsed once per loaded model (not once per offer)."""
    key = id(model)
    if key not in _BANDS_OF:
        if len(_BANDS_OF) > 8:  # older versions, long swapped out
            _BANDS_OF.clear()
        bands = []
        for name in model.manifest.item_features:
            m = _BAND.match(name)
            if m:
                bands.append((float(m["lo"]), math.inf if m["hi"] == "inf" else float(m["hi"]), name))
        _BANDS_OF[key] = bands
    return _BANDS_OF[key]


def cold_share(model: ModelArtifact, side: str) -> float:
    """How much of a learned representation its features make up. A known row is
    `identity_share × own embedding + feature_share × mean of its features' embeddings`; for an
    item or customer never seen, the own embedding is unknown (zero in expectation), so its
    representation is the features' part alone: the mean of their embeddings scaled by the
    feature share. Unscaled, the mean would be several times the size of a learned row, and
    every unseen offer would outrank the known ones (measured on the validation window: 82% of
    the top-10 slots, precision@10 down from 0.19 to 0.09)."""
    settings = model.manifest.settings
    if not settings.get(f"{side}_identity", True):
        return 1.0
    share = settings.get(f"{side}_feature_share")
    return float(share) if isinstance(share, (int, float)) and 0 < share <= 1 else 1.0


class PreparedOffers:
    """The offer side of the scoring, which depends on the catalogue and the model but not on
    the customer: every item of every offer with its representation. Built once per catalogue
    snapshot and model version, and shared by every request until either changes."""

    def __init__(self, offers: list[Offer], model: ModelArtifact) -> None:
        self.offers = offers
        self.model = model
        self.position = {o.offer_id: n for n, o in enumerate(offers)}
        items: list[str] = []
        features: list[list[str]] = []
        owner: list[int] = []
        for n, offer in enumerate(offers):
            feats = None
            for item in offer.item_ids:
                items.append(item)
                if item not in model.item_index:
                    feats = feats if feats is not None else offer_features(offer, model)
                features.append(feats or [])
                owner.append(n)
        self.items = items
        self.owner = np.asarray(owner, np.int64)
        self.repr, self.bias, self.known = model.items(items, features)
        cold = ~self.known
        share = cold_share(model, "item")
        self.repr[cold] *= share
        self.bias[cold] *= share
        self.rows_of_item: dict[str, list[int]] = {}
        for row, item in enumerate(items):
            self.rows_of_item.setdefault(item, []).append(row)


def rank(offers: list[Offer], customer: CustomerView, model: ModelArtifact | None, now: float, k: int,
         prepared: PreparedOffers | None = None) -> list[RankedOffer]:
    """The top k of `offers` (the eligible ones). `prepared` may cover a larger catalogue that
    holds them; without it, it is built for `offers`. (A caller that judged the prepared
    catalogue itself passes its verdicts to `rank_prepared` and skips the look-ups here.)"""
    if not offers:
        return []
    if model is None or not customer.personalisation:
        return _popular(offers, model, k)
    if prepared is None or prepared.model is not model:
        prepared = PreparedOffers(offers, model)
    eligible = np.zeros(len(prepared.offers), bool)
    eligible[[prepared.position[o.offer_id] for o in offers]] = True
    return rank_prepared(prepared, eligible, customer, now, k)


def rank_prepared(prepared: PreparedOffers, eligible: np.ndarray, customer: CustomerView, now: float,
                  k: int) -> list[RankedOffer]:
    """The top k of the prepared catalogue's offers where `eligible` (a mask over them) is true,
    by the model (the caller has checked there is one and that personalisation is consented)."""
    model = prepared.model
    rows = np.flatnonzero(eligible[prepared.owner])  # an offer's rows are contiguous, in offer order
    if len(rows) == 0:
        return []
    u_repr, u_bias, user_known = model.user(customer.customer_id if customer.learned_row else None,
                                            list(customer.features))
    if not user_known:
        u_repr, u_bias = u_repr * cold_share(model, "user"), u_bias * cold_share(model, "user")
    raw = model_scores(u_repr, u_bias, prepared.repr[rows], prepared.bias[rows])
    b = model.manifest.blend
    # the repeat signal is zero but for the items the customer bought: add it only there
    repeat_full = np.zeros(len(prepared.items), np.float32)
    for item, times in customer.purchases.items():
        hit = prepared.rows_of_item.get(item)
        if hit:
            repeat_full[hit] = repeat_signal([[(now - t) / DAY_S for t in times]], b.half_life_days)[0]
    scores = blend(raw, repeat_full[rows], b)
    # per offer, its best item: one reduction over each offer's run of rows
    owner = prepared.owner[rows]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    candidates = owner[starts]
    best = np.maximum.reduceat(scores, starts)
    known_any = np.logical_or.reduceat(prepared.known[rows], starts)
    # the best few by score, then a stable order among them (ties: the catalogue's own order)
    head = np.arange(len(candidates))
    if len(head) > k + 32:
        head = np.argpartition(-best, k + 32)[:k + 32]
    order = sorted(head.tolist(), key=lambda h: (-best[h], ranking_key(prepared.offers[candidates[h]])))[:k]
    return [RankedOffer(prepared.offers[candidates[h]], float(best[h]),
                        "model" if user_known and known_any[h] else "cold_start_features") for h in order]


def popular_order(offers: list[Offer], model: ModelArtifact | None) -> tuple[np.ndarray, np.ndarray]:
    """The popularity fallback's order of a whole catalogue, computed once per catalogue and
    model: (offer indices, best first; each offer's best position among the popular items).
    The eligible ones in this order are `_popular`'s answer for them."""
    popular = model.manifest.popular_items if model is not None else []
    position = {item: p for p, item in enumerate(popular)}
    worst = len(popular)
    best = np.fromiter((min((position.get(i, worst) for i in o.item_ids), default=worst) for o in offers), np.int64,
                       len(offers))
    order = sorted(range(len(offers)), key=lambda n: (best[n], ranking_key(offers[n])))
    return np.asarray(order, np.int64), best


def popular_prepared(offers: list[Offer], order: np.ndarray, best: np.ndarray, eligible: np.ndarray,
                     k: int) -> list[RankedOffer]:
    """`_popular` over the eligible offers of a catalogue whose `popular_order` is known."""
    top = order[eligible[order]][:k]
    # a score that falls with popularity rank, so clients can compare offers within one answer
    return [RankedOffer(offers[n], 1.0 / (1 + int(best[n])), "popular_fallback") for n in top.tolist()]


def _popular(offers: list[Offer], model: ModelArtifact | None, k: int) -> list[RankedOffer]:
    order, best = popular_order(offers, model)
    return popular_prepared(offers, order, best, np.ones(len(offers), bool), k)
