"""The recommender API's documented answers: its problem+json errors (rendered by
`vicino.services.runtime.http_problems`) and the shapes of the routes that answer pre-rendered JSON."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

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


class CustomerProfileOut(BaseModel):
    """One view of a customer across channels (`GET /v1/customers/{customer_id}`)."""
    customer_id: str = Field(description="the canonical customer (the survivor of any merge)")
    requested_id: str
    merged_from: list[str]
    identifiers: list[IdentifierOut]
    consent: dict[str, Any] = Field(description="location, push, personalisation, training flags; `recorded`")
    devices: list[dict[str, Any]]
    history: dict[str, Any] = Field(description="hot_interactions, first_ts, last_ts, channel_mix, types")
    last_purchases: list[dict[str, Any]]
    last_visits: list[dict[str, Any]]
    redeemed_offers: list[str]


class CustomerHistoryOut(BaseModel):
    customer_id: str
    interactions: list[dict[str, Any]] = Field(description="most recent first")
    next_before: float | None = Field(description="pass as `before` for the next page; null on the last")


class CustomerErasureOut(BaseModel):
    erased_customers: int = Field(description="the customer and every customer merged into it")
    interactions_dropped_from_stream: int
    devices_removed: int
    events_dropped: int


class KpiReportOut(BaseModel):
    """The KPI report of a period (`GET /v1/kpis`); docs/architecture.md defines each figure."""
    period: dict[str, float]
    filters: dict[str, str | None]
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
    notes: list[str]
