"""Push jobs: what the recommender asks the push gateway (issue 5) to send, and the marker of
visits that have ended, which the gateway checks before sending.

Jobs go to the stream of the customer's shard (`interactions.customer_shard_tag`), written in the
same atomic script as the decision they come from: a decision never lacks its job, and a job is
never written twice for one visit. The gateway should still deduplicate on `idempotency_key`
(a job may be delivered to it twice) and drop a job after `expires_at` or once its visit is in
`ended_visits_key` (the customer left the store: the moment has passed).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .interactions import customer_shard, customer_shard_tag

SCHEMA = "vicino.push_job"
SCHEMA_VERSION = 1


def push_jobs_stream_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:push:jobs:v{SCHEMA_VERSION}"


def ended_visits_key(customer_id: str, shards: int) -> str:
    """zset: visit_id -> exit time (epoch s), recent exits of the customer's visits (written by
    the recommender from the geo exit events; kept `decision_ttl_s`). `shards` is the
    recommender's customer_shards."""
    return f"vicino:{customer_shard_tag(customer_shard(customer_id, shards))}:customer:{customer_id}:ended_visits"


def idempotency_key(customer_id: str, store_id: str, visit_id: str) -> str:
    return f"{customer_id}:{store_id}:{visit_id}"


class PushDataV1(BaseModel):
    """The data payload the app receives with the notification (all strings, as FCM wants)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offer_id: str
    store_id: str
    visit_id: str
    decision_id: str
    campaign_id: str | None = Field(None, description="the campaign that sent it (None: before campaigns, or none)")
    test: bool = Field(False, description="a campaign's test send (POST /v1/campaigns/{id}/test-sends): delivered "
                       "like any push, never counted in the KPIs; it has no decision")


class PushJobV1(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.push_job"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    job_id: str
    idempotency_key: str = Field(description="customer_id:store_id:visit_id; one push per visit")
    customer_id: str
    device_id: str
    platform: Literal["android", "ios", "web"]
    push_token: str = Field(min_length=1)
    title: str
    body: str
    deep_link: str | None = Field(None, description="opened by the app when the notification is tapped")
    image_url: str | None = Field(None, description="a rich notification's image (FCM image, APNs mutable-content)")
    data: PushDataV1
    collapse_key: str = Field(description="the visit id: a newer notification of a visit replaces an older one")
    created_at: float
    expires_at: float = Field(description="do not deliver after this instant (epoch s)")

    @model_validator(mode="after")
    def _consistent(self) -> "PushJobV1":
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.idempotency_key != idempotency_key(self.customer_id, self.data.store_id, self.data.visit_id):
            raise ValueError("idempotency_key must be customer_id:store_id:visit_id")
        return self

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "data": self.model_dump_json(by_alias=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "PushJobV1":
        return cls.model_validate_json(fields.get("data") or fields.get(b"data"))
