"""Geofence visit events, emitted by the geo service and consumed by the recommender.

Events go to one of `shards` Redis streams, chosen by the device id, so that a device's
state and its events share a hash tag (one Redis Cluster slot): the state update and the
event append are then one atomic script, and a device's events are ordered in one stream.
"""
from __future__ import annotations

import zlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "vicino.geofence_event"
SCHEMA_VERSION = 1


def device_shard(device_id: str, shards: int) -> int:
    return zlib.crc32(device_id.encode()) % shards


def shard_tag(shard: int) -> str:
    """The Redis Cluster hash tag shared by a shard's device state and its event stream."""
    return f"{{geo:{shard:03d}}}"


def events_stream_key(shard: int) -> str:
    return f"vicino:{shard_tag(shard)}:events:geofence:v{SCHEMA_VERSION}"


class GeofenceEventV1(BaseModel):
    """One transition of one device at one store. No coordinates: only which store, when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.geofence_event"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    event_id: str
    type: Literal["enter", "dwell", "exit"]
    device_id: str
    customer_id: str
    store_id: str
    visit_id: str
    ts: float = Field(description="time of the fix that caused the transition, epoch seconds")
    emitted_at: float = Field(description="server time of emission, epoch seconds")
    dwell_s: float | None = Field(None, description="seconds inside so far (dwell, exit)")
    exit_reason: Literal["left", "timeout", "store_removed", "consent_withdrawn", "device_reassigned",
                         "device_removed"] | None = None

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "event": self.model_dump_json(by_alias=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "GeofenceEventV1":
        raw = fields.get("event") or fields.get(b"event")
        return cls.model_validate_json(raw)
