"""Delivery receipts: what became of each push, and the app's report that it was opened."""
from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.problems import InvalidInput, NotFound
from vicino.services.kernel.times import InstantOut, rfc3339, rfc3339_fields

from ..domain.delivery import DeliveryRecord
from .deps import ContainerDep, DeliveryDep, RecipientDep, RecipientOrSupportDep, SupportDep
from .schemas import PROBLEMS, problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)


class StatusChangeOut(BaseModel):
    status: str
    at: InstantOut
    reason: str | None = None
    attempt: int | None = None


class DeliveryOut(BaseModel):
    delivery_id: str
    job_id: str
    customer_id: str
    device_id: str
    platform: str
    store_id: str
    offer_id: str
    visit_id: str
    decision_id: str
    campaign_id: str | None = Field(description="the campaign that sent it; null: none")
    test: bool = Field(description="a campaign's test send (never counted in the KPIs)")
    created_at: InstantOut
    expires_at: InstantOut = Field(description="not delivered after this instant")
    status: str
    reason: str | None
    provider: str | None
    attempts: int
    next_attempt_at: InstantOut | None = Field(description="when a retry is due; null: none was scheduled")
    confirmed: bool
    opened_at: InstantOut | None
    history: list[StatusChangeOut]


class DeliveriesOut(BaseModel):
    customer_id: str
    deliveries: list[DeliveryOut]


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _delivery_out(rec: DeliveryRecord) -> dict:
    out = rfc3339_fields(rec.public(), "created_at", "expires_at", "opened_at")
    # 0 is the record's "no retry scheduled" (a fresh delivery), not an instant of 1970
    out["next_attempt_at"] = rfc3339(rec.next_attempt_at) if rec.next_attempt_at else None
    out["history"] = [rfc3339_fields(h, "at") for h in out["history"]]
    return out


@router.get("/deliveries", tags=["deliveries"], response_model=DeliveriesOut,
            summary="a customer's or a device's deliveries, newest first")
async def list_deliveries(_: SupportDep, c: ContainerDep,
                          customer_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
                          device_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    if (customer_id is None) == (device_id is None):
        raise InvalidInput("name exactly one of customer_id or device_id")
    if device_id is not None:
        reg = await c.repo.registration(device_id)
        if reg is None:
            raise NotFound(f"device {device_id!r} is not registered; ask by customer_id")
        customer_id = await c.repo.canonical(reg["customer_id"])
    records = await c.repo.for_customer(customer_id, 500 if device_id else limit)
    if device_id is not None:
        records = [r for r in records if r.device_id == device_id][:limit]
    return _json({"customer_id": customer_id, "deliveries": [_delivery_out(r) for r in records]})


@router.get("/deliveries/{delivery_id}", tags=["deliveries"], response_model=DeliveryOut,
            summary="one delivery and its status history (admin, or the device it was sent to)")
async def get_delivery(_: RecipientOrSupportDep, rec: DeliveryDep) -> Response:
    return _json(_delivery_out(rec))


@router.post("/deliveries/{delivery_id}/opened", tags=["deliveries"], response_model=DeliveryOut,
             summary="the app reports the push opened (recipient's device token); idempotent",
             responses={409: problem("the push was not sent"),
                        503: problem("the recommender is away; the open is kept, retry")})
async def delivery_opened(_: RecipientDep, rec: DeliveryDep, c: ContainerDep) -> Response:
    """Records the open once and adds an `offer_open` interaction (channel `push`) to the
    customer's history. 409 if the push was not sent; 503 if the recommender is away (the open is
    kept: retry, it is not counted twice)."""
    return _json(_delivery_out(await c.opens.open(rec)))
