"""Decides on store visits from the geo service's visit events (consumer group
`recommender-decisions`): enter/dwell events get their one decision, exits mark their visit
ended. An event is acknowledged only after its decision, push job and counters are written
(one script), so a crash means a redelivery, which finds the visit decided."""
from __future__ import annotations

from vicino.services.kernel.clock import Clock, SystemClock
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, events_stream_key
from vicino.services.kernel.contracts.streams import RECOMMENDER_DECISIONS_GROUP
from vicino.services.runtime.stream_consumer import StreamConsumer, decode_entry

from ..adapters.customer_repository import CustomerRepository
from ..adapters.decision_repository import DecisionRepository
from ..adapters.published_state import PublishedCustomerState
from ..adapters.redis_keys import geo_events_dead_letter
from ..domain.decision_policy import DecisionRules, QuietHours
from ..settings import RecommenderSettings
from ..use_cases.decide import OfferRanker, VisitDecisions
from ..use_cases.identity import IdentityService

GROUP = RECOMMENDER_DECISIONS_GROUP


class DecisionWorker:
    def __init__(self, decisions: VisitDecisions) -> None:
        self.decisions = decisions

    async def handle(self, stream: str, entry_id: str, fields: dict) -> None:
        e = decode_entry(GeofenceEventV1.from_stream_fields, fields, "geofence event v1")
        await self.decisions.on_event(e)


def decision_rules(settings: RecommenderSettings) -> DecisionRules:
    return DecisionRules(cap_per_day=settings.cap_per_day, store_cooldown_s=settings.store_cooldown_s,
                         quiet_hours=QuietHours.parse(settings.quiet_hours),
                         holdout_percent=settings.holdout_percent,
                         # an event older than a push's lifetime could only produce an expired push
                         max_event_age_s=settings.push_ttl_s)


def build_visit_decisions(settings: RecommenderSettings, redis, ranker: OfferRanker,
                          clock: Clock | None = None) -> VisitDecisions:
    customers = CustomerRepository(redis, settings)
    published = PublishedCustomerState(redis, settings.event_shards)
    # merges are not run by this worker: canonical() only reads the pointers
    identity = IdentityService(customers, published, None, None)
    repo = DecisionRepository(redis, settings.customer_shards, settings.decision_ttl_s, settings.store_cooldown_s)
    return VisitDecisions(repo, published, identity, ranker, clock or SystemClock(), decision_rules(settings),
                          frozenset(settings.decide_on.split(",")), settings.push_ttl_s)


def build_decision_consumer(settings: RecommenderSettings, redis, consumer: str, ranker: OfferRanker, *,
                            clock: Clock | None = None) -> StreamConsumer:
    """The decision worker's consumer over every geo event stream (wiring.build_worker_loops
    registers its `run_forever`)."""
    worker = DecisionWorker(build_visit_decisions(settings, redis, ranker, clock))
    streams = [events_stream_key(i) for i in range(settings.event_shards)]
    return StreamConsumer(redis, streams, GROUP, consumer, worker.handle, dead_letter=geo_events_dead_letter)
