"""The offers for one customer, here and now: eligibility (the store's checks plus the
customer's own: offers already redeemed), then the pure ranking over the loaded model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vicino.services.kernel.clock import Clock

from ..adapters.customer_repository import CustomerRepository
from ..adapters.erasure_register import ErasureRegister
from ..adapters.model_store import ModelHolder
from ..domain.eligibility import STORE_CHECKS, Situation, first_failure
from ..domain.offers import Offer
from ..domain.ranking import CustomerView, PreparedOffers, RankedOffer, customer_features, rank, rank_prepared
from .catalog import Catalog


def not_redeemed(redeemed: frozenset[str]):
    def _check(offer: Offer, _s: Situation) -> str | None:
        return "redeemed" if offer.offer_id in redeemed else None
    return _check


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

    async def rank(self, customer: str, *, personalisation: bool, store_id: str | None, channel: str, k: int,
                   now: float | None = None) -> Ranking:
        """`customer` is already the canonical id (`IdentityService.canonical`) and `personalisation`
        its consent to a personalised ranking: the caller has resolved and read both."""
        now = self.clock.now() if now is None else now
        seq, offers = await self.catalog.versioned_offers()
        situation, _ = await self.catalog.situation(store_id, channel, now, offers)
        checks = STORE_CHECKS + (not_redeemed(frozenset(await self.customers.redeemed(customer))),)
        verdicts = np.fromiter((first_failure(o, situation, checks) is None for o in offers), bool, len(offers))
        model = self.models.model
        view = await self._view(customer, personalisation, model, now)
        if model is not None and view.personalisation:
            ranked = rank_prepared(self._prepare(seq, offers, model), verdicts, view, now, k)
        else:
            ranked = rank([o for o, ok in zip(offers, verdicts) if ok], view, model, now, k)
        return Ranking(customer, store_id, channel, ranked, model.version if model is not None else None, now)

    def _prepare(self, seq: int, offers: list[Offer], model) -> PreparedOffers:
        """The offer side of the scores, rebuilt only when the catalogue or the model changes."""
        key = (seq, id(offers), model.version)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, PreparedOffers(offers, model))
        return self._prepared[1]

    async def _view(self, customer: str, personalisation: bool, model, now: float) -> CustomerView:
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
