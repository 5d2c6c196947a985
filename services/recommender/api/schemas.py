"""The recommender API's documented answers: its problem+json errors (rendered by
`vicino.services.runtime.http_problems`) and the shapes of the routes that answer pre-rendered JSON."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vicino.services.kernel.times import InstantOut
from vicino.services.runtime.http_problems import BODY_PROBLEMS, problem  # noqa: F401 (BODY_PROBLEMS re-exported to the routers)

# errors every /v1 route may answer (each authenticates its caller and validates its input)
PROBLEMS = {401: problem("missing, invalid, expired or replaced token"),
            403: problem("this token may not do this (admin-only route, or another customer's data)"),
            404: problem("no such resource (or route)"),
            422: problem("invalid input; `errors` lists each invalid field"),
            429: problem("this device token or API key is over its rate limit; `Retry-After` says when to retry")}


# --- the routes that answer with a pre-rendered JSON body document their shape here ---

class IdentifierOut(BaseModel):
    kind: str
    value: str


class ConsentViewOut(BaseModel):
    location: bool
    marketing: bool
    personalisation: bool
    updated_at: InstantOut | None
    recorded: bool = Field(description="false: the customer never set consent (everything off)")


class DeviceViewOut(BaseModel):
    device_id: str
    platform: str | None
    timezone: str | None
    registered_at: InstantOut | None
    location_consent: bool


class HistorySummaryOut(BaseModel):
    hot_interactions: int
    first_ts: InstantOut | None = Field(description="the oldest interaction of the hot history")
    last_ts: InstantOut | None
    channel_mix: dict[str, Any] = Field(description="per channel: count and share")
    types: dict[str, int]


class InteractionOut(BaseModel):
    """An interaction as the hot history keeps it (the customer is the one asked about)."""
    event_id: str
    channel: str
    type: str
    item_id: str | None = None
    offer_id: str | None = None
    store_id: str | None = None
    quantity: float | None = None
    value: float | None = None
    currency: str | None = None
    country: str | None = None
    score: int | None = Field(None, description="a survey's 0-10 score")
    reply_to: str | None = Field(None, description="the support_contact a support_reply answers")
    ts: InstantOut = Field(description="when it happened")
    received_at: InstantOut = Field(description="when Vicino accepted it")


class VisitOut(BaseModel):
    visit_id: str
    store_id: str
    device_id: str
    entered_at: InstantOut | None
    dwelled: bool
    left_at: InstantOut | None = Field(description="null while the visit is open")
    dwell_s: float | None
    exit_reason: str | None


class CustomerProfileOut(BaseModel):
    """One view of a customer across channels (`GET /v1/customers/{customer_id}`)."""
    customer_id: str = Field(description="the canonical customer (the survivor of any merge)")
    requested_id: str
    merged_from: list[str]
    identifiers: list[IdentifierOut]
    locale: str | None = Field(description="BCP 47, canonical (\"it-IT\"), as a CRM import set it; null if unknown")
    country: str | None = Field(description="ISO 3166-1 alpha-2, as a CRM import set it; null if unknown")
    consent: ConsentViewOut
    devices: list[DeviceViewOut]
    history: HistorySummaryOut
    last_purchases: list[InteractionOut]
    last_visits: list[VisitOut]
    redeemed_offers: list[str]


class FieldErrorOut(BaseModel):
    field: str
    message: str


class CustomerBatchResultOut(BaseModel):
    index: int = Field(description="the item's position in `customers`")
    customer_id: str | None
    status: Literal["created", "updated", "rejected"] = Field(
        description="created: the recommender held nothing of the customer before (no identifiers, interactions, "
                    "visits or attributes); updated: it did")
    errors: list[FieldErrorOut] | None = Field(None, description="why the item was rejected")


class CustomerBatchOut(BaseModel):
    created: int
    updated: int
    rejected: int
    results: list[CustomerBatchResultOut] = Field(description="one per item, in order")


class CustomerHistoryOut(BaseModel):
    customer_id: str
    interactions: list[InteractionOut] = Field(description="most recent first")
    next_before: InstantOut | None = Field(description="pass as `before` for the next page; null on the last")


class CustomerErasureOut(BaseModel):
    erased_customers: int = Field(description="the customer and every customer merged into it")
    interactions_dropped_from_stream: int
    devices_removed: int
    events_dropped: int


class KpiPeriodOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: InstantOut = Field(alias="from", description="start (included)")
    to: InstantOut = Field(description="end (excluded)")


class KpiReportOut(BaseModel):
    """The KPI report of a period (`GET /v1/kpis`); docs/architecture.md defines each figure."""
    period: KpiPeriodOut
    filters: dict[str, str | None] = Field(description="store_id, offer_id, campaign_id")
    attribution_window_s: float
    empty: bool
    empty_reason: str | None
    decisions: dict[str, Any]
    deliveries: dict[str, Any]
    conversions: dict[str, Any]
    funnel: dict[str, int]
    uplift: dict[str, Any]
    repurchase: dict[str, Any]
    by_store: list[dict[str, Any]]
    by_campaign: list[dict[str, Any]] = Field(description="per campaign (sorted by campaign_id): decisions, sent, "
                                              "held_out, conversions per key, revenue, uplift against its holdout")
    retention: dict[str, Any] | None = Field(description="of the customers active in the period, the share active "
                                             "again in the next period of the same length; treated against holdout; "
                                             "null until that period has ended (see `unavailable`)")
    upselling: dict[str, Any] | None = Field(description="baskets in the attribution window after an exposure: value "
                                             "and items per basket, treated against holdout")
    nps: dict[str, Any] | None = Field(description="net promoter score of the customers' latest surveys, and per "
                                       "channel")
    responsiveness: dict[str, Any] | None = Field(description="support contacts answered within 24 h, median and "
                                                  "p90 time to answer, unanswered; and per channel")
    unavailable: dict[str, str] = Field(default_factory=dict, description="why a figure is null: figure -> reason")
    notes: list[str] = Field(default_factory=list, description="what to keep in mind reading it (GET /v1/kpis only)")
