"""The offers for one customer, here and now: eligibility (the store's checks plus the
customer's own: offers already redeemed), then the pure ranking over the loaded model."""
from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from vicino.services.kernel.clock import Clock

from ..adapters.customer_repository import CustomerRepository
from ..adapters.erasure_register import ErasureRegister
from ..adapters.model_store import ModelHolder
from ..domain.eligibility import STORE_CHECKS, Situation, first_failure
from ..domain.offers import Offer
from ..domain.ranking import (CustomerView, PreparedOffers, RankedOffer, customer_features, popular_order,
                              popular_prepared, rank_prepared)
from .catalog import Catalog

MASKS_KEPT = 4096  # stores x channels whose verdicts are kept (a replica sees the stores its visits are at)


@dataclass(frozen=True)
class Ranking:
    customer_id: str
    store_id: str | None
    channel: str
    offers: list[RankedOffer]
    model_version: str | None
    generated_at: float

    def to_public(self) -> dict:
        return {"customer_id": self.customer_id, "store_id": self.store_id, "channel": self.channel,
                "model_version": self.model_version, "generated_at": self.generated_at,
                "offers": [{"rank": n + 1, "offer_id": r.offer.offer_id, "title": r.offer.title,
                            "body": r.offer.body, "item_ids": list(r.offer.item_ids),
                            "price": r.offer.canonical_price, "regular_price": r.offer.price,
                            "currency": r.offer.currency, "fulfilment": r.offer.fulfilment,
                            "valid_to": r.offer.valid_to, "score": round(r.score, 6), "reason": r.reason}
                           for n, r in enumerate(self.offers)]}


class OfferRanker:
    def __init__(self, catalog: Catalog, customers: CustomerRepository, models: ModelHolder, clock: Clock) -> None:
        self.catalog = catalog
        self.customers = customers
        self.models = models
        self.clock = clock
        self.erasures = ErasureRegister(customers.redis, customers.erasure_key)
        self._prepared: tuple[tuple, PreparedOffers] | None = None
        self._boundaries: tuple[tuple, list[float]] | None = None
        self._popular: tuple[tuple, tuple[np.ndarray, np.ndarray]] | None = None
        # (store, channel, catalogue, rules revision, stock) -> (from, until, the store checks' verdicts)
        self._masks: OrderedDict[tuple, tuple[float, float, np.ndarray]] = OrderedDict()

    async def rank(self, customer: str, *, personalisation: bool, store_id: str | None, channel: str, k: int,
                   now: float | None = None, history: list[dict] | None = None) -> Ranking:
        """`customer` is already the canonical id (`IdentityService.canonical`) and `personalisation`
        its consent to a personalised ranking: the caller has resolved and read both. `history`:
        the customer's hot history when the caller has just read it (else it is read here)."""
        now = self.clock.now() if now is None else now
        seq, offers = await self.catalog.versioned_offers()
        situation, rules_revision, stock_version = await self.catalog.situation(store_id, channel, now, offers)
        verdicts = self._store_verdicts(seq, offers, situation, rules_revision, stock_version).copy()
        redeemed = await self.customers.redeemed(customer)
        if redeemed:
            for n, o in enumerate(offers):
                if o.offer_id in redeemed:
                    verdicts[n] = False
        model = self.models.model
        view = await self._view(customer, personalisation, model, now, history)
        if model is not None and view.personalisation:
            ranked = rank_prepared(self._prepare(seq, offers, model), verdicts, view, now, k)
        else:
            ranked = popular_prepared(offers, *self._popular_order(seq, offers, model), verdicts, k)
        return Ranking(customer, store_id, channel, ranked, model.version if model is not None else None, now)

    def _store_verdicts(self, seq: int, offers: list[Offer], s: Situation, rules_revision: int,
                        stock_version: int) -> np.ndarray:
        """The store checks' verdict per offer, computed once per store, channel, catalogue, rules
        revision and stock, and reused until the next instant at which one could change (an
        offer's validity starting or ending, or the next minute while closed stores are
        suppressed: opening hours change on the minute)."""
        key = (s.store.store_id if s.store else None, s.channel, seq, id(offers), rules_revision, stock_version)
        hit = self._masks.get(key)
        if hit is not None and hit[0] <= s.now < hit[1]:
            self._masks.move_to_end(key)
            return hit[2]
        mask = np.fromiter((first_failure(o, s, STORE_CHECKS) is None for o in offers), bool, len(offers))
        until = self._next_boundary(seq, offers, s.now)
        if s.rules.suppress_closed_stores:
            until = min(until, (math.floor(s.now / 60) + 1) * 60)
        self._masks[key] = (s.now, until, mask)
        if len(self._masks) > MASKS_KEPT:
            self._masks.popitem(last=False)
        return mask

    def _next_boundary(self, seq: int, offers: list[Offer], now: float) -> float:
        key = (seq, id(offers))
        if self._boundaries is None or self._boundaries[0] != key:
            self._boundaries = (key, sorted({t for o in offers for t in (o.valid_from, o.valid_to)}))
        times = self._boundaries[1]
        i = bisect.bisect_right(times, now)
        return times[i] if i < len(times) else math.inf

    def _popular_order(self, seq: int, offers: list[Offer], model) -> tuple[np.ndarray, np.ndarray]:
        key = (seq, id(offers), model.version if model is not None else None)
        if self._popular is None or self._popular[0] != key:
            self._popular = (key, popular_order(offers, model))
        return self._popular[1]

    def _prepare(self, seq: int, offers: list[Offer], model) -> PreparedOffers:
        """The offer side of the scores, rebuilt only when the catalogue or the model changes."""
        key = (seq, id(offers), model.version)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, PreparedOffers(offers, model))
        return self._prepared[1]

    async def _view(self, customer: str, personalisation: bool, model, now: float,
                    history: list[dict] | None = None) -> CustomerView:
        if history is None:
            history = await self.customers.hot_history(customer)
        purchases: dict[str, list[float]] = {}
        for h in history:
            if h["type"] == "purchase" and h.get("item_id"):
                purchases.setdefault(h["item_id"], []).append(h["ts"])
        known = model is not None and customer in model.user_index
        if known:  # a row learned before the customer was erased (and the id came back) is never used
            erased_at = await self.erasures.erased_at(customer)
            known = erased_at is None or model.learned_after(erased_at)
        features = tuple(customer_features(history, now, model)) if model is not None and not known else ()
        return CustomerView(customer, personalisation, features, purchases, learned_row=known)
