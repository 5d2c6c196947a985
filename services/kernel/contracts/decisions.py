"""Offer decisions: one per store visit, sent or suppressed, with its reason. Written by the
recommender's decision worker; read by the KPIs (issue 6).

A shard's decisions stream shares its hash tag with the customers of that shard (see
`interactions.customer_shard_tag`), so that a decision, its push job and the customer's caps are
written by one atomic script.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .interactions import customer_shard_tag

SCHEMA = "vicino.decision"
SCHEMA_VERSION = 1

REASONS = ("visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap", "store_cooldown",
           "no_eligible_offer", "holdout")
SuppressReason = Literal["visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap", "store_cooldown",
                         "no_eligible_offer", "holdout"]


def decisions_stream_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:decisions:v{SCHEMA_VERSION}"


class DecisionV1(BaseModel):
    """The decision on one visit. `reason` is None exactly when the push was sent. A holdout
    customer's would-be push is `suppress`/`holdout` and carries the offer it would have sent;
    `holdout` is the customer's group, whatever the outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_: Literal["vicino.decision"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = SCHEMA_VERSION
    decision_id: str
    customer_id: str = Field(description="the canonical customer at decision time")
    device_id: str
    store_id: str
    visit_id: str
    event_id: str = Field(description="the geofence event that was decided on")
    event_type: Literal["enter", "dwell"]
    outcome: Literal["send", "suppress"]
    reason: SuppressReason | None = None
    offer_id: str | None = None
    score: float | None = None
    price: float | None = Field(None, description="the offer's canonical price")
    currency: str | None = None
    rank_reason: str | None = Field(None, description="why the ranking chose the offer: model, "
                                    "cold_start_features, popular_fallback")
    model_version: str | None = None
    holdout: bool
    job_id: str | None = Field(None, description="the push job of a sent decision")
    ts: float = Field(description="time of the event's fix, epoch seconds")
    decided_at: float

    @model_validator(mode="after")
    def _consistent(self) -> "DecisionV1":
        if (self.outcome == "send") != (self.reason is None):
            raise ValueError("a sent decision has no reason; a suppressed one has one")
        if self.outcome == "send" and (self.offer_id is None or self.job_id is None or self.holdout):
            raise ValueError("a sent decision carries its offer and push job, and never for a holdout customer")
        if self.reason == "holdout" and (not self.holdout or self.offer_id is None):
            raise ValueError("a holdout decision names the offer that would have been sent")
        return self

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "data": self.model_dump_json(by_alias=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "DecisionV1":
        return cls.model_validate_json(fields.get("data") or fields.get(b"data"))
