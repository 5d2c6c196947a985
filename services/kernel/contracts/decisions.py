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

# Why a visit got no push. The first five are the global protection every campaign is under
# (checked once per visit); the others are a campaign's own (see CAMPAIGN_REASONS). A decision's
# top-level reason is `holdout` when a campaign held the customer out and none sent, else the
# reason of the first campaign considered (the highest priority), else the global one.
GLOBAL_REASONS = ("visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap", "store_cooldown")
CAMPAIGN_REASONS = ("paused", "outside_schedule", "outside_hours", "not_in_audience", "quiet_hours", "cap_reached",
                    "cooldown", "budget_spent", "no_eligible_offer", "outranked")
REASONS = GLOBAL_REASONS + ("paused", "outside_schedule", "outside_hours", "not_in_audience", "cap_reached",
                            "cooldown", "budget_spent", "no_eligible_offer", "holdout")
SuppressReason = Literal["visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap", "store_cooldown",
                         "paused", "outside_schedule", "outside_hours", "not_in_audience", "cap_reached",
                         "cooldown", "budget_spent", "no_eligible_offer", "holdout"]
CampaignReason = Literal["visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap", "store_cooldown",
                         "paused", "outside_schedule", "outside_hours", "not_in_audience", "cap_reached", "cooldown",
                         "budget_spent", "no_eligible_offer", "outranked"]


def decisions_stream_key(shard: int) -> str:
    return f"vicino:{customer_shard_tag(shard)}:decisions:v{SCHEMA_VERSION}"


class CampaignOutcomeV1(BaseModel):
    """What one campaign whose trigger matched the visit made of it, in the order tried
    (priority, then campaign id). `sent` and `held_out` carry the offer; `suppressed` its reason:
    one of CAMPAIGN_REASONS, or the global reason that stopped every campaign, or `outranked`
    (a campaign tried before it sent or held out)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str
    revision: int = Field(description="the campaign's revision the decision used")
    outcome: Literal["sent", "held_out", "suppressed"]
    reason: CampaignReason | None = None
    offer_id: str | None = None
    score: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "CampaignOutcomeV1":
        if (self.outcome == "suppressed") != (self.reason is not None):
            raise ValueError("a suppressed campaign outcome has a reason; sent and held_out have none")
        if self.outcome != "suppressed" and self.offer_id is None:
            raise ValueError("a sent or held_out campaign outcome names its offer")
        return self


class MessageV1(BaseModel):
    """The rendered push: the campaign's template in the chosen locale, fields filled in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    locale: str
    title: str
    body: str
    deep_link: str | None = None
    image_url: str | None = None


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
    campaign_id: str | None = Field(None, description="the campaign that sent (or held out) the push; None when "
                                    "no campaign did")
    campaigns: list[CampaignOutcomeV1] = Field(default_factory=list, description="every campaign whose trigger "
                                               "matched, in the order tried, with its outcome")
    message: MessageV1 | None = Field(None, description="the rendered push (sent, or what a holdout would have got)")
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
        if self.campaign_id is not None and not any(
                c.campaign_id == self.campaign_id and c.outcome in ("sent", "held_out") for c in self.campaigns):
            raise ValueError("campaign_id names the campaign whose outcome is sent or held_out")
        return self

    def to_stream_fields(self) -> dict[str, str]:
        return {"v": str(SCHEMA_VERSION), "data": self.model_dump_json(by_alias=True)}

    @classmethod
    def from_stream_fields(cls, fields: dict) -> "DecisionV1":
        return cls.model_validate_json(fields.get("data") or fields.get(b"data"))
