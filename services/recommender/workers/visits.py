"""Keeps each customer's recent store visits (for the profile) from the geo service's visit
events: enter opens a visit, dwell marks it, exit closes it. Only while the customer's location
consent holds, read when the event is handled: events queued before a withdrawal record nothing."""
from __future__ import annotations

from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, events_stream_key
from vicino.services.kernel.contracts.streams import RECOMMENDER_VISITS_GROUP
from vicino.services.runtime.stream_consumer import StreamConsumer, decode_entry

from ..adapters.customer_repository import CustomerRepository
from ..adapters.erasure_register import ErasureRegister
from ..adapters.published_state import PublishedCustomerState
from ..adapters.redis_keys import geo_events_dead_letter
from ..domain.identity import Moved
from ..use_cases.identity import CanonicalIds

GROUP = RECOMMENDER_VISITS_GROUP


class VisitRecorder:
    def __init__(self, customers: CustomerRepository, identity: CanonicalIds,
                 published: PublishedCustomerState) -> None:
        self.customers = customers
        self.identity = identity
        self.published = published

    async def handle(self, stream: str, entry_id: str, fields: dict) -> None:
        e = decode_entry(GeofenceEventV1.from_stream_fields, fields, "geofence event v1")
        erased_at = await ErasureRegister(self.customers.redis, self.customers.erasure_key).erased_at(e.customer_id)
        if erased_at is not None and erased_at >= e.emitted_at:
            return  # emitted before the customer was erased: keep no trace
        customer = await self.identity.canonical(e.customer_id)
        if not await self.published.consents(("location",), e.customer_id, customer):
            return  # consent withdrawn since the event was emitted (or never given): record nothing
        for _ in range(4):
            current = await self.customers.visit(customer, e.visit_id) or {
                "visit_id": e.visit_id, "store_id": e.store_id, "device_id": e.device_id,
                "entered_at": e.ts if e.type == "enter" else None, "dwelled": False, "left_at": None,
                "dwell_s": None, "exit_reason": None}
            if e.type == "enter":
                current["entered_at"] = e.ts
            elif e.type == "dwell":
                current["dwelled"] = True
                current["dwell_s"] = e.dwell_s
            else:
                current.update(left_at=e.ts, dwell_s=e.dwell_s, exit_reason=e.exit_reason)
            order = current["entered_at"] if current["entered_at"] is not None else e.ts
            outcome = await self.customers.record_visit(customer, e.visit_id, order, current)
            if not isinstance(outcome, Moved):
                return
            customer = await self.identity.canonical(outcome.customer_id)


def visit_consumer(redis, recorder: VisitRecorder, event_shards: int, consumer: str) -> StreamConsumer:
    streams = [events_stream_key(i) for i in range(event_shards)]
    return StreamConsumer(redis, streams, GROUP, consumer, recorder.handle, dead_letter=geo_events_dead_letter)
