"""Decides on store visits from the geo service's visit events (consumer group
`recommender-decisions`): enter/dwell events get their one decision, exits mark their visit
ended. An event is acknowledged only after its decision, push job and counters are written
(one script), so a crash means a redelivery, which finds the visit decided."""
from __future__ import annotations

from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, events_stream_key
from vicino.services.kernel.contracts.streams import RECOMMENDER_DECISIONS_GROUP
from vicino.services.runtime.stream_consumer import StreamConsumer, decode_entry

from ..adapters.redis_keys import geo_events_dead_letter
from ..use_cases.decide import VisitDecisions

GROUP = RECOMMENDER_DECISIONS_GROUP


def decision_consumer(redis, worker: "DecisionWorker", event_shards: int, consumer: str) -> StreamConsumer:
    """The decision worker's consumer over every geo event stream."""
    streams = [events_stream_key(i) for i in range(event_shards)]
    return StreamConsumer(redis, streams, GROUP, consumer, worker.handle, dead_letter=geo_events_dead_letter)


class DecisionWorker:
    def __init__(self, decisions: VisitDecisions) -> None:
        self.decisions = decisions

    async def handle(self, stream: str, entry_id: str, fields: dict) -> None:
        e = decode_entry(GeofenceEventV1.from_stream_fields, fields, "geofence event v1")
        await self.decisions.on_event(e)
