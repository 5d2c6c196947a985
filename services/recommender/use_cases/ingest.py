"""Ingestion of interaction batches: judge each item, resolve it to its customer, store it once.

A batch is never all-or-nothing: each item is accepted, recognised as a duplicate (same
event_id seen before, e.g. a retried request), or rejected with its reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vicino.services.kernel.auth import Principal
from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.interactions import InteractionV1
from vicino.services.kernel.problems import InvalidInput, PayloadTooLarge

from ..adapters.customer_repository import CustomerRepository
from ..domain.identity import Moved
from ..domain.interactions import Draft, Rejection, judge
from ..settings import RecommenderSettings
from .identity import IdentityService

MAX_REDIRECTS = 4


@dataclass
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)  # per item: index, event_id, outcome, customer_id

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                "results": self.results}


class InteractionIngest:
    def __init__(self, customers: CustomerRepository, identity: IdentityService, clock: Clock,
                 settings: RecommenderSettings) -> None:
        self.customers = customers
        self.identity = identity
        self.clock = clock
        self.settings = settings

    async def ingest(self, body: object, caller: Principal) -> IngestReport:
        items = body.get("interactions") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise InvalidInput("expected a JSON array of interactions, or {\"interactions\": [...]}")
        if not items:
            raise InvalidInput("the batch is empty")
        if len(items) > self.settings.max_batch:
            raise PayloadTooLarge(f"{len(items)} interactions in one batch; at most {self.settings.max_batch}")
        now = self.clock.now()
        report = IngestReport()
        resolved: list[tuple[Draft, str]] = []
        own = None if caller.device is None else await self.identity.canonical(caller.device.customer_id)
        cache: dict[str, str | None] = {}
        for n, raw in enumerate(items):
            verdict = judge(n, raw, now, self.settings.max_future_s)
            if isinstance(verdict, Rejection):
                self._reject(report, verdict)
                continue
            customer = await self._customer_of(verdict, cache)
            if own is not None and (customer is None or (
                    customer != own and await self.identity.canonical(customer) != own)):
                # one answer for "linked to no one" and "linked to someone else": a phone must not
                # learn whether an e-mail or a card belongs to a customer
                self._reject(report, Rejection(n, verdict.event_id, "not_your_customer",
                                               "a device token may only send its own customer's interactions"))
                continue
            if customer is None:
                self._reject(report, Rejection(n, verdict.event_id, "unknown_identifier",
                                               f"identifier {verdict.identifier!r} is linked to no customer"))
                continue
            resolved.append((verdict, customer))
        await self._store(resolved, now, report)
        report.results.sort(key=lambda r: r["index"])
        return report

    async def _customer_of(self, d: Draft, cache: dict[str, str | None]) -> str | None:
        """Identifiers are looked up; a customer id is taken as given, because the ingestion
        script itself redirects an id that was merged away (atomically, unlike a lookup here)."""
        if d.identifier is None:
            return d.customer_id
        if d.identifier not in cache:
            cache[d.identifier] = await self.identity.resolve(d.identifier)
        return cache[d.identifier]

    async def _store(self, resolved: list[tuple[Draft, str]], now: float, report: IngestReport) -> None:
        seen_in_batch: set[tuple[str, str]] = set()
        pending: list[tuple[Draft, str]] = []
        for d, customer in resolved:
            if (customer, d.event_id) in seen_in_batch:  # the same event twice in one batch
                report.duplicates += 1
                report.results.append({"index": d.index, "event_id": d.event_id, "outcome": "duplicate",
                                       "customer_id": customer})
                continue
            seen_in_batch.add((customer, d.event_id))
            pending.append((d, customer))
        for _ in range(MAX_REDIRECTS):
            if not pending:
                return
            batch = [InteractionV1(event_id=d.event_id, customer_id=c, received_at=now, **d.fields)
                     for d, c in pending]
            outcomes = await self.customers.append(batch, log=True, now=now)
            retry = []
            for (d, c), outcome in zip(pending, outcomes):
                if isinstance(outcome, Moved):  # merged meanwhile: store under the survivor
                    retry.append((d, await self.identity.canonical(outcome.customer_id)))
                    continue
                if outcome == "ok":
                    report.accepted += 1
                else:
                    report.duplicates += 1
                report.results.append({"index": d.index, "event_id": d.event_id, "outcome": outcome,
                                       "customer_id": c})
            pending = retry
        for d, c in pending:
            self._reject(report, Rejection(d.index, d.event_id, "merge_in_progress",
                                           "the customer is being merged; retry the item"))

    @staticmethod
    def _reject(report: IngestReport, r: Rejection) -> None:
        report.rejected.append(r.as_dict())
        report.results.append({"index": r.index, "event_id": r.event_id, "outcome": "rejected", "customer_id": None})
