"""Erasure of a customer: every trace in Redis goes (ours, and through the geo service's API its
location data), and the customer is remembered only as a digest so that the exporter and the
partition rewrite drop their rows from training files.

Order matters for retries: the geo service first (if it is unreachable, nothing of ours is gone
yet and a retry still knows every merged alias), then the register of digests, then our keys.
Each member remembers the whole group (`…:erasing`) until the last step, so a retry after a
failure part-way (the survivor's list of aliases already deleted) erases every alias still.
"""
from __future__ import annotations

import logging

from vicino.services.kernel.clock import Clock
from vicino.services.kernel.contracts.decisions import decisions_stream_key
from vicino.services.kernel.contracts.deliveries import dead_jobs_stream_key, receipts_stream_key
from vicino.services.kernel.contracts.geofence_events import events_stream_key
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
from vicino.services.kernel.problems import NotFound

from ..adapters.customer_repository import CustomerRepository
from ..adapters.decision_repository import DecisionRepository
from ..adapters.geo_client import GeoClient
from ..adapters.push_deliveries import PushDeliveryRecords
from ..adapters.published_state import PublishedCustomerState
from ..adapters.erasure_register import ErasureRegister
from ..adapters.redis_keys import geo_events_dead_letter
from .identity import IdentityService

log = logging.getLogger("vicino.recommender.erasure")


class Erasure:
    def __init__(self, customers: CustomerRepository, published: PublishedCustomerState,
                 identity: IdentityService, geo: GeoClient, clock: Clock, event_shards: int,
                 decisions: DecisionRepository) -> None:
        self.customers = customers
        self.published = published
        self.identity = identity
        self.geo = geo
        self.clock = clock
        self.event_shards = event_shards
        self.decisions = decisions
        self.deliveries = PushDeliveryRecords(customers.redis, customers.shards)

    async def erase(self, customer_id: str) -> dict:
        members = await self.identity.members(customer_id)
        if customer_id not in members:
            members.append(customer_id)
        for m in list(members):  # an erasure cut short: the survivor's alias set may be gone already
            members += [x for x in await self.customers.erasing_members(m) if x not in members]
        if not await self._any_trace(members):
            raise NotFound(f"customer {customer_id!r} has no data here (already erased, or never seen)")
        await self.customers.mark_erasing(members)
        location = {"devices_removed": 0, "events_dropped": 0}
        for m in members:
            out = await self.geo.erase_location_data(m)
            for k in location:
                location[k] += int(out.get(k, 0))
        now = self.clock.now()
        await ErasureRegister(self.customers.redis, self.customers.erasure_key).record(members, now)
        for m in members:
            for identifier in await self.customers.identifiers(m):
                await self.customers.forget_identifier(identifier, m)
            await self.customers.delete_data(m, keep_pointer=False)
            await self.decisions.delete(m)
            await self.deliveries.erase(m)
        # the decisions, push jobs, delivery receipts and dead push jobs of their shards, and the
        # dead letters this service wrote beside the geo event streams, may hold them too
        shards = sorted({customer_shard(m, self.customers.shards) for m in members})
        extra = [key(s) for s in shards for key in (decisions_stream_key, push_jobs_stream_key,
                                                    receipts_stream_key, dead_jobs_stream_key)]
        extra += [geo_events_dead_letter(events_stream_key(i)) for i in range(self.event_shards)]
        dropped = await self.customers.drop_from_streams(set(members), extra)
        await self.customers.clear_erasing(members)  # last: a retry before this finishes the job
        log.info("customer erased", extra={"fields": {"customers": len(members)}})  # no ids in logs
        return {"erased_customers": len(members), "interactions_dropped_from_stream": dropped, **location}

    async def _any_trace(self, members: list[str]) -> bool:
        for m in members:
            if (await self.customers.has_data(m) or await self.customers.merged_into(m)
                    or await self.customers.erasing_members(m)
                    or await self.published.has_consent_record(m) or await self.published.devices(m)
                    or await self.deliveries.has_any(m)):
                return True
        return False

