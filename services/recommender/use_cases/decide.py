"""Deciding on a store visit: at most one push per visit, and exactly one logged decision.

For an event the configuration decides on (enter and/or dwell), the use case reads what the
policy needs (consent, the device's time zone and push token, the customer's pushes today and
at this store, whether the visit is decided or over), asks the ranker for the best offer only
when the visit could still get a push, applies the pure policy, and records the decision with
its push job and counters in one atomic script. The script refuses if the visit was decided
meanwhile (a redelivery, a racing consumer: nothing more is written) or if the counters moved
since they were read (another visit of the customer was decided: read and decide again), so
caps hold under concurrency. An exit event marks its visit ended, for the policy and the push
gateway.

`visit_already_decided` is an outcome of this use case, not a logged decision: the decisions
stream holds exactly one entry per decided visit.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.decisions import DecisionV1
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key
from vicino.services.kernel.ids import new_id
from vicino.services.kernel.problems import NotFound

from ..adapters.decision_repository import DecisionRepository
from ..adapters.published_state import PublishedCustomerState
from ..domain.decision_policy import (DEFAULT_TIMEZONE, Decision, DecisionRules, OfferChoice, Situation, decide, gate,
                                      local_day_start)
from ..domain.identity import Moved
from .identity import CanonicalIds

log = logging.getLogger("vicino.recommender.decisions")
CHANNEL = "app"    # a geofence decision is a push to the app
MAX_ROUNDS = 8     # counters moved or the customer was merged meanwhile: read and decide again


class RankedOffer(Protocol):
    offer_id: str
    score: float
    price: float | None
    currency: str | None
    title: str
    body: str
    reason: str


class Ranking(Protocol):
    offers: Sequence[RankedOffer]
    model_version: str | None


class RanksOffers(Protocol):
    """The port to the offer ranking (use_cases/ranking.py's `OfferRanker` implements it)."""

    async def rank(self, customer: str, *, personalisation: bool, store_id: str | None, channel: str, k: int,
                   now: float) -> Ranking:
        """`customer`: the canonical id; `personalisation`: its consent to a personalised ranking."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What became of one event: `kind` is decided, duplicate (the visit already had its
    decision), ended (an exit, recorded), ignored (not an event decided on, an erased customer,
    or one without location and marketing consent: nothing is logged for them)."""

    kind: str
    decision: DecisionV1 | None = None
    job: PushJobV1 | None = None


class VisitDecisions:
    def __init__(self, repo: DecisionRepository, published: PublishedCustomerState, identity: CanonicalIds,
                 ranker: RanksOffers, clock: Clock, rules: DecisionRules, decide_on: frozenset[str],
                 push_ttl_s: float) -> None:
        self.repo = repo
        self.published = published
        self.identity = identity
        self.ranker = ranker
        self.clock = clock
        self.rules = rules
        self.decide_on = decide_on
        self.push_ttl_s = push_ttl_s
        self.counts: Counter[str] = Counter()  # outcome or reason -> events, for logs and tests

    async def on_event(self, e: GeofenceEventV1) -> Outcome:
        if e.type != "exit" and e.type not in self.decide_on:
            return self._count(Outcome("ignored"))
        erased_at = await self.repo.erased_at(e.customer_id)
        if erased_at is not None and erased_at >= e.emitted_at:
            return self._count(Outcome("ignored"))  # emitted before the customer was erased: keep no trace
        customer = await self.identity.canonical(e.customer_id)
        if e.type == "exit":
            for _ in range(MAX_ROUNDS):
                out = await self.repo.end_visit(customer, e.visit_id, e.ts, self.clock.now())
                if not isinstance(out, Moved):
                    return self._count(Outcome("ended"))
                customer = await self.identity.canonical(out.customer_id)
            raise RuntimeError("the customer kept being merged while recording an exit")
        return self._count(await self._decide(e, customer))

    async def _decide(self, e: GeofenceEventV1, customer: str) -> Outcome:
        # consent as geo holds it now, not as it was when the event was queued: a visit seen after
        # the customer withdrew location or marketing consent is decided on by no one
        if not await self.published.consents(("location", "marketing"), e.customer_id, customer):
            return Outcome("ignored")
        reg = await self.published.registration(e.device_id)
        # a device removed or handed to someone else: geo ends its visits, so does the decision
        device_theirs = reg is not None and bool(reg.get("push_token")) and (
            reg["customer_id"] == e.customer_id or await self.identity.canonical(reg["customer_id"]) == customer)
        tz = (reg or {}).get("timezone") or DEFAULT_TIMEZONE
        marketing, consent = await self._consents(e.customer_id, customer)
        ranked_for: str | None = None
        offer: OfferChoice | None = None
        model_version: str | None = None
        for _ in range(MAX_ROUNDS):
            now = self.clock.now()
            day_start = local_day_start(now, tz)
            read = await self.repo.counters(customer, e.visit_id, e.store_id, day_start, now)
            s = Situation(customer_id=customer, event_ts=e.ts, now=now, marketing_consent=marketing, timezone=tz,
                          pushes_today=read.pushes_today, last_push_at_store=read.last_push_at_store,
                          visit_decided=read.visit_decided, visit_ended=read.visit_ended or not device_theirs)
            if s.visit_decided:
                return Outcome("duplicate")
            if gate(s, self.rules) is None and ranked_for != customer:
                try:
                    if consent is None:  # the gate passed, so it was read; a safety net
                        consent = await self.published.consent(customer)
                    ranking = await self.ranker.rank(customer, personalisation=consent["personalisation"],
                                                     store_id=e.store_id, channel=CHANNEL, k=1, now=now)
                    offer = _choice(ranking.offers[0]) if ranking.offers else None
                    model_version = ranking.model_version
                except NotFound:  # the store was removed since the event: nothing to offer there
                    offer, model_version = None, None
                ranked_for = customer
            d = decide(s, self.rules, offer)
            record, job = self._records(e, customer, d, reg, model_version if d.offer else None, now)
            out = await self.repo.record(customer, read, day_start, now, record, job, d.counts_as_push)
            if out == "ok":
                log.info("visit decided", extra={"fields": {"store_id": e.store_id, "outcome": d.outcome,
                                                            "reason": d.reason, "event_type": e.type}})
                return Outcome("decided", record, job)
            if out == "duplicate":
                return Outcome("duplicate")
            if isinstance(out, Moved):
                customer = await self.identity.canonical(out.customer_id)
                marketing, consent = await self._consents(e.customer_id, customer)
        raise RuntimeError("the customer's counters kept moving; the event will be retried")

    async def _consents(self, event_customer: str, customer: str) -> tuple[bool, dict | None]:
        """The marketing consent that decides, and the canonical customer's consent record (None
        when it was not needed: the event's customer had no marketing consent)."""
        # geo keeps consent per customer id; after a merge both ids carry the stricter one
        first = await self.published.consent(event_customer)
        if customer == event_customer:
            return bool(first["marketing"]), first
        if not first["marketing"]:
            return False, None
        consent = await self.published.consent(customer)
        return bool(consent["marketing"]), consent

    def _records(self, e: GeofenceEventV1, customer: str, d: Decision, reg: dict | None, model_version: str | None,
                 now: float) -> tuple[DecisionV1, PushJobV1 | None]:
        decision_id = new_id("dec")
        job = None
        if d.outcome == "send":
            assert d.offer is not None and reg is not None
            job = PushJobV1(
                job_id=new_id("job"), idempotency_key=idempotency_key(customer, e.store_id, e.visit_id),
                customer_id=customer, device_id=e.device_id, platform=reg["platform"], push_token=reg["push_token"],
                title=d.offer.title, body=d.offer.body,
                data=PushDataV1(offer_id=d.offer.offer_id, store_id=e.store_id, visit_id=e.visit_id,
                                decision_id=decision_id),
                collapse_key=e.visit_id, created_at=now, expires_at=now + self.push_ttl_s)
        o = d.offer
        record = DecisionV1(
            decision_id=decision_id, customer_id=customer, device_id=e.device_id, store_id=e.store_id,
            visit_id=e.visit_id, event_id=e.event_id, event_type=e.type, outcome=d.outcome, reason=d.reason,
            offer_id=o.offer_id if o else None, score=o.score if o else None, price=o.price if o else None,
            currency=o.currency if o else None, rank_reason=o.reason if o else None, model_version=model_version,
            holdout=d.holdout, job_id=job.job_id if job else None, ts=e.ts, decided_at=now)
        return record, job

    def _count(self, outcome: Outcome) -> Outcome:
        d = outcome.decision
        self.counts[outcome.kind if d is None else (d.reason or "send")] += 1
        return outcome


def _choice(o: RankedOffer) -> OfferChoice:
    return OfferChoice(offer_id=o.offer_id, score=float(o.score), price=o.price, currency=o.currency,
                       title=o.title, body=o.body, reason=o.reason)
