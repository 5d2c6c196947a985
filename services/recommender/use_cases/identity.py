"""Identity: resolving identifiers and customer ids to the one customer they are, linking
identifiers, and merging two customers when a link shows they are the same person.

A merge keeps the smaller id (domain.identity.survivor) and is a sequence of idempotent steps,
the first of which points the merged customer at the survivor: from then on ingestion
redirects, and re-running the merge (a retry after a crash) finishes what was left.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

import orjson

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.interactions import InteractionV1
from vicino.services.kernel.problems import Conflict

from ..adapters.customer_repository import CustomerRepository
from ..adapters.decision_repository import DecisionRepository
from ..adapters.geo_client import GeoClient
from ..adapters.published_state import PublishedCustomerState
from ..adapters.redis_keys import MERGE_LOCK
from ..domain.identity import split_identifier, stricter_consent, survivor

log = logging.getLogger("vicino.recommender.identity")
MAX_HOPS = 32
LOCK_TTL_MS = 30_000


class IdentifierTaken(Conflict):
    """A link that would merge two customers without the caller vouching for it (409)."""


@dataclass
class LinkResult:
    customer_id: str                 # the customer the identifier now belongs to
    identifier: str
    created: bool                    # a new link (not already there)
    merged: list[str] = field(default_factory=list)  # customers merged into customer_id by this link


@dataclass
class BatchLink:
    """One customer's identifiers linked by `link_batch`: to `customer_id` (the canonical one),
    or none of them, with the reason per identifier that could not be."""
    customer_id: str | None
    errors: list[dict] = field(default_factory=list)  # [{field: "identifiers.N", message}]


class CanonicalIds:
    """Follows merge pointers to the surviving customer: all the workers need of identity (they
    never merge), so they hold this and not an IdentityService."""

    def __init__(self, customers: CustomerRepository) -> None:
        self.customers = customers

    async def canonical(self, customer_id: str) -> str:
        current = customer_id
        for _ in range(MAX_HOPS):
            nxt = await self.customers.merged_into(current)
            if nxt is None or nxt == current:
                return current
            current = nxt
        raise Conflict(f"merge pointers of {customer_id!r} form a chain longer than {MAX_HOPS}")


class IdentityService:
    def __init__(self, customers: CustomerRepository, published: PublishedCustomerState, geo: GeoClient,
                 clock: Clock, decisions: DecisionRepository) -> None:
        self.customers = customers
        self.published = published
        self.geo = geo
        self.clock = clock
        self.decisions = decisions
        self._ids = CanonicalIds(customers)

    async def canonical(self, customer_id: str) -> str:
        """Follows merge pointers to the surviving customer."""
        return await self._ids.canonical(customer_id)

    async def owner(self, identifier: str) -> str | None:
        """The customer id an identifier was linked to (not yet resolved through merges). A device
        never linked explicitly belongs to the customer that registered it with the geo service."""
        holder = await self.customers.identifier_owner(identifier)
        if holder is None:
            kind, value = split_identifier(identifier)
            if kind == "device":
                holder = await self.published.customer_of_device(value)
        return holder

    async def resolve(self, identifier: str) -> str | None:
        holder = await self.owner(identifier)
        return None if holder is None else await self.canonical(holder)

    async def link(self, customer_id: str, identifier: str, *, verified: bool = False) -> LinkResult:
        """Links `identifier` to the customer. If it belongs to another customer, the two are
        merged only when the caller vouches that the person proved they hold it (`verified`: a
        card scanned at the till, an e-mail confirmed by a link); otherwise `IdentifierTaken`
        and nothing changes, so typing someone else's card number merges no one."""
        async with self._merge_lock():
            target = await self.canonical(customer_id)
            holder = await self.owner(identifier)
            if holder is None:
                holder = await self.customers.claim_identifier(identifier, target)
                if holder == target:
                    return LinkResult(target, identifier, created=True)
            other = await self.canonical(holder)
            if other != target and not verified:
                raise IdentifierTaken("the identifier belongs to another customer; link it with \"verified\": "
                                      "true, once the person has proved they hold it, to merge the two")
            recorded = False
            if await self.customers.identifier_owner(identifier) is None:
                # a device known only from its registration: record the link explicitly
                await self.customers.move_identifier(identifier, other)
                recorded = True
            if other == target:
                await self._finish_pending(target)
                return LinkResult(target, identifier, created=recorded)
            keep = survivor(target, other)
            gone = other if keep == target else target
            await self._merge(gone, keep)
            return LinkResult(keep, identifier, created=True, merged=[gone])

    async def link_batch(self, requests: list[tuple[str, tuple[str, ...]]]) -> list[BatchLink]:
        """Links each (customer, identifiers) as `link` does without `verified`, for a whole batch
        in a few pipelined trips under one hold of the merge lock: a customer whose identifier
        belongs to another customer (or to another customer of this batch, given earlier) gets
        none of its identifiers linked, and no one is merged."""
        c = self.customers
        async with self._merge_lock():
            targets = await c.canonical_many([customer for customer, _ in requests], MAX_HOPS)
            flat = [ident for _, idents in requests for ident in idents]
            owners = dict(zip(flat, await c.identifier_owners(flat)))
            registered = {}  # devices linked only by their registration (as `owner` reads them)
            for ident, holder in owners.items():
                kind, value = split_identifier(ident)
                if holder is None and kind == "device":
                    registered[ident] = await self.published.customer_of_device(value)
            holders = sorted({h for h in [*owners.values(), *registered.values()] if h is not None})
            canonical_of = dict(zip(holders, await c.canonical_many(holders, MAX_HOPS)))
            out: list[BatchLink] = []
            given: dict[str, str] = {}        # identifier -> the customer an earlier item of the batch links it to
            claims: list[tuple[int, str, str]] = []  # (item, identifier, customer) to claim
            for n, ((customer, idents), target) in enumerate(zip(requests, targets)):
                if target is None:
                    out.append(BatchLink(None, [{"field": "customer_id", "message":
                                                 f"its merge pointers form a chain longer than {MAX_HOPS}"}]))
                    continue
                errors, mine, record = [], [], []
                for pos, ident in enumerate(idents):
                    holder = owners.get(ident) or registered.get(ident)
                    other = canonical_of.get(holder) if holder is not None else None
                    kind = split_identifier(ident)[0]
                    if other is not None and other != target:
                        errors.append({"field": f"identifiers.{pos}", "message": f"this {kind} is linked to another "
                                       "customer; not merged (link it on its own with \"verified\": true once the "
                                       "person has proved they hold it)"})
                    elif given.get(ident, target) != target:
                        errors.append({"field": f"identifiers.{pos}", "message": f"this {kind} is given for another "
                                       "customer earlier in this batch"})
                    elif holder is None:
                        mine.append(ident)
                    elif owners.get(ident) is None:
                        record.append(ident)  # a device known from its registration: recorded explicitly
                if errors:
                    out.append(BatchLink(None, errors))
                    continue
                for ident in idents:
                    given[ident] = target
                for ident in record:
                    await c.move_identifier(ident, target)
                claims += [(n, ident, target) for ident in mine]
                for ident in mine:
                    owners[ident] = target  # a later item naming it sees it taken
                out.append(BatchLink(target))
            won = await c.claim_identifiers([(ident, target) for _, ident, target in claims])
            lost = {n for (n, _, _), ok in zip(claims, won) if not ok}
            if lost:  # someone outside the lock took one meanwhile: that customer gets none
                await c.release_identifiers([(ident, target) for (n, ident, target), ok in zip(claims, won)
                                             if ok and n in lost])
                for n in lost:
                    out[n] = BatchLink(None, [{"field": "identifiers", "message": "an identifier was linked to "
                                               "another customer meanwhile; retry"}])
            return out

    async def unlink(self, customer_id: str, identifier: str) -> bool:
        target = await self.canonical(customer_id)
        if await self.customers.identifier_owner(identifier) != target:
            return False
        await self.customers.forget_identifier(identifier, target)
        return True

    async def members(self, customer_id: str) -> list[str]:
        """The canonical customer and every customer merged into it."""
        c = await self.canonical(customer_id)
        return [c] + [a for a in await self.customers.aliases(c) if a != c]

    # merging -------------------------------------------------------------------------------------

    async def _merge(self, gone: str, keep: str) -> None:
        now = self.clock.now()
        # the pointer and the alias first: ingestion for `gone` is redirected from here on, and a
        # retry after a crash finds `gone` among the aliases and finishes moving it
        await self.customers.set_merged_into(gone, keep)
        await self.customers.add_aliases(keep, [gone])
        await self._absorb(gone, keep)
        # consent: the stricter of the two, on both (geo owns consent; a device of either keeps
        # obeying it). A failure here leaves the data merged; a retry of the link re-applies it.
        await self._harmonise_consent(keep, gone)
        await self.customers.log_merge(gone, keep, now)
        log.info("customers merged")  # no ids in logs (the merge log for training has them)

    async def _absorb(self, gone: str, keep: str) -> None:
        """Moves everything of `gone` (and of whoever was merged into it) to `keep`. Idempotent."""
        c = self.customers
        raw = await c.hot_entries_raw(gone)
        if raw:
            # the hot history only: these interactions are already in the log under `gone`
            items = [InteractionV1(customer_id=keep, **orjson.loads(entry)) for entry in raw.values()]
            await c.append(items, log=False, now=self.clock.now())
        await c.add_seen(keep, await c.seen(gone))
        await c.add_redeemed(keep, await c.redeemed(gone))
        for v in await c.visits(gone):
            # a visit known only from its exit has no entry time: order it by its exit
            await c.record_visit(keep, v["visit_id"], v.get("entered_at") or v.get("left_at") or 0.0, v)
        for identifier in await c.identifiers(gone):
            await c.move_identifier(identifier, keep)
        # locale and country: the survivor's own stay, what it lacks comes from `gone`
        await c.fill_attributes(keep, await c.attributes(gone))
        if self.decisions is not None:  # caps and decided visits follow the person
            await self.decisions.absorb(gone, keep)
        old_aliases = await c.aliases(gone)
        await c.add_aliases(keep, [gone, *old_aliases])
        for alias in old_aliases:  # shorten the chains: every alias points at the survivor
            await c.set_merged_into(alias, keep)
        await c.delete_data(gone, keep_pointer=True)

    async def _harmonise_consent(self, keep: str, gone: str) -> None:
        have_keep = await self.published.has_consent_record(keep)
        have_gone = await self.published.has_consent_record(gone)
        if not (have_keep or have_gone):
            return
        a = await self.published.consent(keep) if have_keep else None
        b = await self.published.consent(gone) if have_gone else None
        strict = stricter_consent(a, b) if a and b else (a or b)
        for customer in (keep, gone):
            await self.geo.set_consent(customer, strict)

    async def _finish_pending(self, target: str) -> None:
        """After a crash mid-merge, a retried link finds the pointer set and the data not moved."""
        for alias in await self.customers.aliases(target):
            if await self.customers.has_data(alias):
                await self._absorb(alias, target)
                await self._harmonise_consent(target, alias)

    def _merge_lock(self):
        return _RedisLock(self.customers.redis, MERGE_LOCK, LOCK_TTL_MS)


class _RedisLock:
    """Merges are rare and touch several slots: one lock serialises them across replicas."""

    def __init__(self, redis, key: str, ttl_ms: int) -> None:
        self._r, self._key, self._ttl = redis, key, ttl_ms
        self._token = secrets.token_hex(8)

    async def __aenter__(self):
        for attempt in range(200):
            if await self._r.set(self._key, self._token, nx=True, px=self._ttl):
                return self
            await asyncio.sleep(min(0.005 * (attempt + 1), 0.1))
        raise Conflict("another merge is in progress; retry shortly")

    async def __aexit__(self, *exc) -> None:
        script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
        await self._r.eval(script, 1, self._key, self._token)
