"""The catalogue use cases: offers, store stock, campaign rules, and which offers a store may show.

Every write is validated whole before anything is stored (a bulk upsert item by item: the good
ones are stored, the bad ones reported), so a refused request leaves Redis as it was. The
catalogue is kept in memory per replica and reloaded when its change counter moves.
"""
from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.problems import (Conflict, InvalidInput, NotFound, PayloadTooLarge, Problem,
                                      describe_validation_errors, invalid_input)

from ..adapters.catalog_repository import CatalogRepository, StoredRules
from ..domain.campaign_rules import CampaignRules
from ..domain.eligibility import Situation, StoreView, Verdicts, sort_out
from ..domain.offers import READ_ONLY_FIELDS, Offer

MAX_BULK_OFFERS = 10_000


STOCKS_KEPT = 4096  # stores whose stock a replica keeps between requests


class PreconditionFailed(Problem):
    status = 412
    title = "Precondition failed"


@dataclass
class BulkResult:
    created: int = 0
    updated: int = 0
    rejected: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class _Snapshot:
    seq: int
    offers: dict[str, Offer]
    ids: list[str]  # sorted: the listing's order and cursor
    listing: list[Offer]  # in `ids` order; the same list object until the catalogue changes


@dataclass(frozen=True)
class RulesDocument:
    revision: int
    updated_at: float | None
    rules: CampaignRules

    def to_public(self) -> dict:
        return {"revision": self.revision, "updated_at": self.updated_at, "rules": self.rules.model_dump()}


@dataclass(frozen=True)
class StoreOffers:
    store: StoreView
    channel: str
    at: float
    rules_revision: int
    verdicts: Verdicts


def _validate_offer(item: Any, now: float, offer_id: str | None = None) -> Offer:
    """Raises ValueError with a reason a person can act on."""
    if not isinstance(item, dict):
        raise ValueError("expected an offer object")
    body_id = item.get("offer_id")
    if offer_id is not None and body_id is not None and body_id != offer_id:
        raise ValueError(f"offer_id {str(body_id)[:40]!r} does not match the offer id {offer_id!r} in the path")
    data = {k: v for k, v in item.items() if k not in READ_ONLY_FIELDS}
    data["updated_at"] = now
    if offer_id is not None:
        data["offer_id"] = offer_id
    try:
        return Offer.model_validate(data)
    except ValidationError as e:
        raise ValueError(describe_validation_errors(list(e.errors()))[0]) from None


class Catalog:
    def __init__(self, repo: CatalogRepository, clock: Clock) -> None:
        self.repo = repo
        self.clock = clock
        self._snapshot = _Snapshot(-1, {}, [], [])
        self._items: tuple[list[Offer], list[str]] | None = None
        # store -> (stock version, the catalogue it was read for, the stock of its items)
        self._stock: OrderedDict[str, tuple[int, list[Offer], dict[str, int]]] = OrderedDict()

    # offers ----------------------------------------------------------------------------------------

    async def put_offer(self, offer_id: str, body: Any) -> tuple[Offer, bool]:
        try:
            offer = _validate_offer(body, self.clock.now(), offer_id)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        (created,) = await self.repo.upsert_offers([(offer_id, offer.model_dump_json().encode())])
        return offer, created

    async def bulk(self, body: Any) -> BulkResult:
        """A JSON array of offers, or {"offers": [...]}."""
        items = body.get("offers") if isinstance(body, dict) and set(body) == {"offers"} else body
        if not isinstance(items, list):
            raise InvalidInput('expected a JSON array of offers or {"offers": [...]}')
        if len(items) > MAX_BULK_OFFERS:
            raise PayloadTooLarge(f"{len(items)} offers; at most {MAX_BULK_OFFERS} per request, send them in batches")
        result = BulkResult()
        good = await asyncio.to_thread(self._validate_all, items, self.clock.now(), result)
        if good:
            created = await self.repo.upsert_offers([(o.offer_id, o.model_dump_json().encode()) for o in good])
            result.created = sum(created)
            result.updated = len(created) - result.created
        return result

    @staticmethod
    def _validate_all(items: list, now: float, result: BulkResult) -> list[Offer]:
        good: dict[str, Offer] = {}
        for i, item in enumerate(items):
            try:
                offer = _validate_offer(item, now)
            except ValueError as e:
                oid = item.get("offer_id") if isinstance(item, dict) else None
                result.rejected.append({"index": i, "offer_id": oid if isinstance(oid, str) else None,
                                        "reason": str(e)})
                continue
            if offer.offer_id in good:
                # the last one wins, as a sequence of PUTs would; say so
                result.warnings.append({"index": i, "offer_id": offer.offer_id,
                                        "warning": "duplicate offer_id in the batch; the last one wins"})
            good[offer.offer_id] = offer
        return list(good.values())

    async def delete_offer(self, offer_id: str) -> None:
        if not await self.repo.delete_offer(offer_id):
            raise NotFound(f"offer {offer_id!r} does not exist")

    async def _current(self) -> _Snapshot:
        # The seq is read before the offers: a write landing in between leaves a snapshot newer
        # than its seq says, which the next call reloads; never one older than it says.
        seq = await self.repo.offers_seq()
        snap = self._snapshot
        if seq != snap.seq:
            raw = await self.repo.all_offers()
            offers = {o.offer_id: o for o in map(Offer.model_validate_json, raw)}
            ids = sorted(offers)
            snap = self._snapshot = _Snapshot(seq, offers, ids, [offers[i] for i in ids])
        return snap

    async def offers(self) -> list[Offer]:
        """The whole catalogue (the recommender's candidates)."""
        return list((await self._current()).listing)

    async def versioned_offers(self) -> tuple[int, list[Offer]]:
        """The catalogue and its sequence number: the list is shared (do not mutate it) and stays
        the same object while the sequence does, so callers can cache what they derive from it."""
        snap = await self._current()
        return snap.seq, snap.listing

    async def get_offer(self, offer_id: str) -> Offer:
        offer = (await self._current()).offers.get(offer_id)
        if offer is None:
            raise NotFound(f"offer {offer_id!r} does not exist")
        return offer

    async def list_offers(self, *, store_id: str | None, channel: str | None, active_at: float | None,
                          limit: int, after: str | None) -> tuple[list[Offer], str | None]:
        """Offers by id, after the cursor `after`; the second value is the next cursor or None."""
        snap = await self._current()
        start = 0 if after is None else bisect.bisect_right(snap.ids, after)
        page: list[Offer] = []
        for oid in snap.ids[start:]:
            o = snap.offers[oid]
            if ((store_id is None or o.covers_store(store_id)) and (channel is None or o.on_channel(channel))
                    and (active_at is None or o.active_at(active_at))):
                if len(page) == limit:
                    return page, page[-1].offer_id
                page.append(o)
        return page, None

    # stock -----------------------------------------------------------------------------------------

    async def _known_store(self, store_id: str) -> None:
        if not await self.repo.store_exists(store_id):
            raise NotFound(f"store {store_id!r} does not exist (stores are managed by the geo service)")

    async def stock(self, store_id: str) -> dict[str, int]:
        await self._known_store(store_id)
        return await self.repo.stock(store_id)

    async def replace_stock(self, store_id: str, quantities: dict[str, int]) -> dict[str, int]:
        await self._known_store(store_id)
        await self.repo.replace_stock(store_id, quantities)
        return quantities

    async def patch_stock(self, store_id: str, deltas: dict[str, int]) -> dict[str, int]:
        await self._known_store(store_id)
        outcome = await self.repo.patch_stock(store_id, deltas)
        if not outcome.applied:
            errors = [{"field": item, "message": f"{held} held, {delta:+d} would leave {held + delta}"}
                      for item, held, delta in outcome.refused]
            head = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
            more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
            raise Conflict(f"stock cannot go below zero ({head}{more}); nothing was changed", errors=errors)
        return outcome.quantities

    # campaign rules --------------------------------------------------------------------------------

    @staticmethod
    def _document(stored: StoredRules) -> RulesDocument:
        rules = CampaignRules() if stored.rules is None else CampaignRules.model_validate(stored.rules)
        return RulesDocument(stored.revision, stored.updated_at, rules)

    async def rules(self) -> RulesDocument:
        return self._document(await self.repo.rules())

    async def put_rules(self, body: Any, expected_revision: int | None) -> RulesDocument:
        """`expected_revision`: the revision the caller read (If-Match); None writes regardless."""
        if not isinstance(body, dict):
            raise InvalidInput("expected the rules as a JSON object")
        try:
            rules = CampaignRules.model_validate(body)
        except ValidationError as e:
            raise invalid_input(e) from None
        now = self.clock.now()
        written, revision = await self.repo.put_rules(rules.model_dump_json().encode(), expected_revision, now)
        if not written:
            raise PreconditionFailed(f"the rules are at revision {revision}, not {expected_revision}: someone changed "
                                     "them since you read them; GET them again, reapply your change and retry",
                                     headers={"ETag": f'"{revision}"'})
        return RulesDocument(revision, now, rules)

    # eligibility at a store ------------------------------------------------------------------------

    async def situation(self, store_id: str | None, channel: str, now: float,
                        offers: list[Offer]) -> tuple[Situation, int, int]:
        """Where, what the store holds of these offers' items, the rules: what eligibility needs
        (and the rules' revision and the stock's version). No store: only the time and channel
        checks will apply. A store's stock is kept between calls and read again only when its
        version (bumped by every stock write) or the catalogue moved."""
        doc = await self.rules()
        if store_id is None:
            return Situation(None, {}, doc.rules, channel, now), doc.revision, 0
        feature = await self.repo.store_feature(store_id)
        if feature is None:
            raise NotFound(f"store {store_id!r} does not exist (stores are managed by the geo service)")
        version = await self.repo.stock_version(store_id)
        kept = self._stock.get(store_id)
        if kept is not None and kept[0] == version and kept[1] is offers:
            self._stock.move_to_end(store_id)
            stock = kept[2]
        else:
            stock = await self.repo.stock_of(store_id, self._items_of(offers))
            self._stock[store_id] = (version, offers, stock)
            if len(self._stock) > STOCKS_KEPT:
                self._stock.popitem(last=False)
        return Situation(StoreView.from_feature(feature), stock, doc.rules, channel, now), doc.revision, version

    def _items_of(self, offers: list[Offer]) -> list[str]:
        """Every item of these offers, sorted; kept for the catalogue's shared list (the same
        object while its sequence number stays)."""
        if self._items is None or self._items[0] is not offers:
            self._items = (offers, sorted({item for o in offers for item in o.item_ids}))
        return self._items[1]

    async def offers_at_store(self, store_id: str, channel: str, at: float | None) -> StoreOffers:
        offers = await self.offers()
        now = self.clock.now() if at is None else at
        situation, revision, _ = await self.situation(store_id, channel, now, offers)
        verdicts = sort_out(offers, situation)
        return StoreOffers(situation.store, channel, now, revision, verdicts)
