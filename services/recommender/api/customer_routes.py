"""Customers, their identifiers and interactions: ingestion, profile, history, erasure."""
from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from vicino.services.kernel.contracts.interactions import Channel, InteractionType
from vicino.services.runtime.http_edge import INSTANT_PARAM, JsonBody, instant_param
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import rfc3339, rfc3339_fields
from vicino.services.kernel.problems import InvalidInput, NotFound

from ..domain.identity import IdentifierError, normalise_identifier
from ..domain.interactions import InteractionIn
from .deps import (AppBackendDep, ContainerDep, IdentifierReaderDep, InteractionWriterDep, ProfileReaderDep,
                   SupportDep)
from ..domain.customer_records import MAX_CUSTOMER_BATCH, batch_items
from .schemas import (BODY_PROBLEMS, PROBLEMS, CustomerBatchOut, CustomerErasureOut, CustomerHistoryOut,
                      CustomerProfileOut, problem)

router = APIRouter(prefix="/v1", responses=PROBLEMS)
CustomerId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN)]


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class IdentifierBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["device", "loyalty_card", "email", "email_sha256", "phone", "phone_sha256", "cookie"]
    value: str
    verified: bool = Field(False, description="the person proved they hold the identifier (a card scanned at the "
                                             "till, an e-mail confirmed by a link): only then does linking an "
                                             "identifier of another customer merge the two; otherwise 409")


class InteractionBatchIn(BaseModel):
    """A JSON array of interactions is accepted too."""
    interactions: list[InteractionIn]


class IdentifierLinkOut(BaseModel):
    customer_id: str
    identifier: str
    created: bool
    merged: list[str] = Field(description="customers merged into customer_id by this link")


class IdentifierOwnerOut(BaseModel):
    identifier: str
    customer_id: str


class IngestOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[dict]
    results: list[dict]


# the times of what the profile and the history show (stored as epoch seconds)
INTERACTION_TIMES = ("ts", "received_at")
VISIT_TIMES = ("entered_at", "left_at")


def _profile_out(p: dict) -> dict:
    return {**p, "consent": rfc3339_fields(p["consent"], "updated_at"),
            "devices": [rfc3339_fields(d, "registered_at") for d in p["devices"]],
            "history": rfc3339_fields(p["history"], "first_ts", "last_ts"),
            "last_purchases": [rfc3339_fields(h, *INTERACTION_TIMES) for h in p["last_purchases"]],
            "last_visits": [rfc3339_fields(v, *VISIT_TIMES) for v in p["last_visits"]]}


def _identifier(kind: str, value: str) -> str:
    try:
        return normalise_identifier(kind, value)
    except IdentifierError as e:
        raise InvalidInput(str(e)) from None


@router.post("/interactions", tags=["interactions"], response_model=IngestOut,
             summary="a batch of up to VICINO_MAX_BATCH interactions; idempotent by event_id",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/InteractionBatchIn"}}}}}, responses=BODY_PROBLEMS)
async def post_interactions(body: JsonBody, p: InteractionWriterDep, c: ContainerDep) -> Response:
    """Each item is judged alone: accepted, a duplicate of one already accepted (a retry), or
    rejected with its reason; the others are kept either way. A device token may send only its
    own customer's interactions."""
    report = await c.ingest.ingest(body, p)
    return _json(report.as_dict())


@router.post("/customers:batch", tags=["customers"], response_model=CustomerBatchOut,
             summary=f"create or update up to {MAX_CUSTOMER_BATCH:,} customers (a CRM import): identifiers, consent, "
                     "locale, country; each judged alone",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/CustomerBatchIn"}}}}},
             responses={**BODY_PROBLEMS, 422: problem(f'not {{"customers": [...]}}, or more than '
                                                      f"{MAX_CUSTOMER_BATCH:,} customers; nothing was changed")})
async def post_customer_batch(body: JsonBody, _: AppBackendDep, c: ContainerDep) -> Response:
    """Each customer is judged alone and `rejected` with its reasons (a malformed id, identifier,
    locale or country, a consent value that is not a boolean, the same customer twice, an
    identifier already linked to another customer: never a merge), the others kept. Identifiers
    are linked as `POST /v1/customers/{customer_id}/identifiers` links them; consent is set at
    the geo service in one call per batch, each change in its audit trail (`source`
    `customer-batch`); `locale` (BCP 47) and `country` (ISO 3166-1 alpha-2) are kept on the
    customer and shown in its profile. Sending the same batch again is safe."""
    try:
        items = batch_items(body)
    except ValueError as e:
        raise InvalidInput(str(e), errors=[{"field": "customers", "message": str(e)}]) from None
    return _json(await c.customer_batch.upsert(items))


@router.post("/customers/{customer_id}/identifiers", tags=["customers"],
             summary="link an identifier; if it belongs to another customer and `verified` is true, the two are "
                     "merged (409 otherwise)",
             responses={**BODY_PROBLEMS, 200: {"model": IdentifierLinkOut, "description": "already linked"},
                        201: {"model": IdentifierLinkOut, "description": "linked"}})
async def link_identifier(customer_id: CustomerId, body: IdentifierBody, _: AppBackendDep, c: ContainerDep) -> Response:
    identifier = _identifier(body.kind, body.value)
    # keys only (app_backend): a device token cannot link, so it cannot probe who holds an identifier
    result = await c.identity.link(customer_id, identifier, verified=body.verified)
    return _json({"customer_id": result.customer_id, "identifier": identifier, "created": result.created,
                  "merged": result.merged}, 201 if result.created else 200)


@router.delete("/customers/{customer_id}/identifiers/{kind}/{value}", tags=["customers"], status_code=204,
               summary="unlink an identifier")
async def unlink_identifier(customer_id: CustomerId, kind: str, value: str, _: AppBackendDep, c: ContainerDep) -> Response:
    identifier = _identifier(kind, value)
    if not await c.identity.unlink(customer_id, identifier):
        raise NotFound(f"{identifier!r} is not linked to customer {customer_id!r}")
    return Response(status_code=204)


@router.get("/identifiers/{kind}/{value}", tags=["customers"],
            summary="which customer an identifier belongs to (e.g. a loyalty card scanned at the till)",
            responses={200: {"model": IdentifierOwnerOut}})
async def resolve_identifier(kind: str, value: str, _: IdentifierReaderDep, c: ContainerDep) -> Response:
    identifier = _identifier(kind, value)
    customer = await c.identity.resolve(identifier)
    if customer is None:
        raise NotFound(f"identifier {identifier!r} is linked to no customer")
    return _json({"identifier": identifier, "customer_id": customer})


@router.get("/customers/{customer_id}", tags=["customers"],
            summary="profile: identifiers, consent, devices, channel mix, last purchases and visits",
            responses={200: {"model": CustomerProfileOut}})
async def get_profile(customer_id: CustomerId, _: ProfileReaderDep, c: ContainerDep) -> Response:
    return _json(_profile_out(await c.profiles.profile(customer_id)))


@router.get("/customers/{customer_id}/history", tags=["customers"],
            summary="recent interactions (hot history), most recent first, paged with `before`",
            responses={200: {"model": CustomerHistoryOut}})
async def get_history(customer_id: CustomerId, _: ProfileReaderDep, c: ContainerDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                      before: Annotated[str | None, Query(max_length=40, description="only interactions before "
                                                          "this instant (`next_before` of the previous page): "
                                                          + INSTANT_PARAM)] = None,
                      channel: Channel | None = None,
                      type: InteractionType | None = None) -> Response:
    page = await c.profiles.history(customer_id, limit=limit, before=instant_param(before, "before"), channel=channel,
                                    type_=type)
    return _json({**page, "interactions": [rfc3339_fields(h, *INTERACTION_TIMES) for h in page["interactions"]],
                  "next_before": rfc3339(page["next_before"])})


@router.delete("/customers/{customer_id}", tags=["customers"],
               summary="erase a customer: every trace in Redis, and their rows from future training files",
               responses={200: {"model": CustomerErasureOut}})
async def erase_customer(customer_id: CustomerId, _: SupportDep, c: ContainerDep) -> Response:
    return _json(await c.erasure.erase(customer_id))
