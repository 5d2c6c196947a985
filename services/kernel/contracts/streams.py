"""The stream registry: every Redis stream family of the system, who consumes it, where its
dead letters go, and how long its entries must stay. Published so that the scheduler's
housekeeping (trimming consumed entries, reclaiming stuck ones) knows the streams without
importing the services that own them; each owner takes its consumer group names from here.

A family has one stream per shard (`shards` names the setting: geo's `event_shards` or the
recommender's `customer_shards`). An entry may be trimmed once every listed group has
acknowledged it and it is older than `keep_s`; families without groups are read by the KPIs and
kept `keep_s` (the KPI raw-data retention) only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from .decisions import decisions_stream_key
from .deliveries import receipts_stream_key
from .geofence_events import events_stream_key
from .push_jobs import push_jobs_stream_key

# consumer groups (the owners import these names)
RECOMMENDER_VISITS_GROUP = "recommender-visits"        # geo events → store visits
RECOMMENDER_DECISIONS_GROUP = "recommender-decisions"  # geo events → offer decisions and push jobs
PUSH_GATEWAY_GROUP = "push-gateway"                    # push jobs → deliveries

DEAD_SUFFIX = ":dead"


def dead_letter_of(stream: str) -> str:
    """Where a stream's consumers put entries they can never handle (same hash tag)."""
    return stream + DEAD_SUFFIX


def trimmed_unconsumed_key(stream: str) -> str:
    """The counter (same hash tag) of the stream's entries that housekeeping trimmed at the hard cap
    while a consumer group still needed them; the consumers' /metrics export it."""
    return stream + ":trimmed-unconsumed"


@dataclass(frozen=True)
class StreamFamily:
    name: str
    key: Callable[[int], str]
    shards: Literal["event_shards", "customer_shards"]
    groups: tuple[str, ...]
    keep: Literal["until_consumed", "kpi_retention"]
    owner: str

    def keys(self, shards: int) -> list[str]:
        return [self.key(i) for i in range(shards)]


STREAM_FAMILIES: tuple[StreamFamily, ...] = (
    StreamFamily("geo_events", events_stream_key, "event_shards",
                 (RECOMMENDER_VISITS_GROUP, RECOMMENDER_DECISIONS_GROUP), "until_consumed", owner="geo"),
    StreamFamily("push_jobs", push_jobs_stream_key, "customer_shards", (PUSH_GATEWAY_GROUP,), "until_consumed",
                 owner="recommender"),
    StreamFamily("decisions", decisions_stream_key, "customer_shards", (), "kpi_retention", owner="recommender"),
    StreamFamily("delivery_receipts", receipts_stream_key, "customer_shards", (), "kpi_retention",
                 owner="push_gateway"),
)
# The interaction streams are not here: the recommender's exporter trims them itself, exactly at
# what it has committed to the Parquet log.
