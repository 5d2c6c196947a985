"""Routes of the catalogue: offers, store stock, campaign rules and the offers a store may show.

Writes need the admin token; reading an offer or a store's offers also takes a device token.
AdminDep comes before JsonBody in every signature: FastAPI resolves dependencies in parameter
order, and a body (up to VICINO_MAX_BULK_BODY_BYTES on the bulk route) must not be read or parsed
for an unauthorised caller.
"""
from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, StrictInt, StringConstraints, TypeAdapter, ValidationError, WithJsonSchema
from starlette.responses import Response

from vicino.services.kernel.contracts.interactions import Channel
from vicino.services.runtime.http_edge import INSTANT_PARAM, JsonBody, instant_param
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import INSTANT_OUT_SCHEMA, InstantOut, rfc3339, rfc3339_fields

from ..domain.campaign_rules import CampaignRules
from ..domain.offers import Offer
from ..use_cases.catalog import MAX_BULK_OFFERS, RulesDocument
from .deps import CatalogReaderDep, ContainerDep, OfferReaderDep, OperatorDep
from .revisions import ANY, if_match_revision
from .schemas import BODY_PROBLEMS, PROBLEMS, problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)
OfferId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, description="client-chosen offer id")]
StoreId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, description="a store of the geo service")]
ItemId = Annotated[str, StringConstraints(pattern=CLIENT_ID_PATTERN)]
MAX_UNITS = 1_000_000_000
MAX_STOCK_ITEMS = 100_000
# Strict: 2.5 units, "3" or true are a client mistake, not something to round or coerce.
_QUANTITIES = TypeAdapter(Annotated[dict[ItemId, Annotated[StrictInt, Field(ge=0, le=MAX_UNITS)]],
                                    Field(max_length=MAX_STOCK_ITEMS)])
_DELTAS = TypeAdapter(Annotated[dict[ItemId, Annotated[StrictInt, Field(ge=-MAX_UNITS, le=MAX_UNITS)]],
                                Field(max_length=MAX_STOCK_ITEMS)])


def _json(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _validated(adapter: TypeAdapter, body: Any):
    try:
        return adapter.validate_python(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None  # rendered by the shared problem handler


# the offer's times, as answered (RFC 3339) and as documented
OFFER_TIMES = {"valid_from": "start of validity", "valid_to": "exclusive end of validity",
               "updated_at": "when it was last written"}


def _offer_out_schema() -> dict:
    """The offer as answered: the stored fields, its times as RFC 3339, and what is derived."""
    schema = Offer.model_json_schema()
    for name, what in OFFER_TIMES.items():
        schema["properties"][name] = {**INSTANT_OUT_SCHEMA, "description": what}
    schema["properties"]["canonical_price"] = {"type": "number", "description": "the one price, whatever the channel"}
    schema["properties"]["available_on_channel"] = {"type": "boolean", "description": "with ?channel= only"}
    schema["required"] = [*schema.get("required", []), "canonical_price"]
    schema["title"] = "OfferOut"
    return schema


OFFER_OUT_SCHEMA = _offer_out_schema()
OfferJson = Annotated[dict, WithJsonSchema(OFFER_OUT_SCHEMA)]


def _offer_out(offer: Offer, channel: str | None = None) -> dict:
    out = rfc3339_fields(offer.to_public(), *OFFER_TIMES)
    if channel is not None:
        out["available_on_channel"] = offer.on_channel(channel)
    return out


class BulkOffersOut(BaseModel):
    created: int
    updated: int
    rejected: list[dict] = Field(description="{index, offer_id, reason} of each refused item; nothing of it stored")
    warnings: list[dict]


class OfferPageOut(BaseModel):
    offers: list[OfferJson]
    next_after: str | None = Field(description="pass as `after` for the next page; null on the last")


class RulesOut(BaseModel):
    revision: int = Field(description="0 until the rules are first written; also the ETag")
    updated_at: InstantOut | None
    rules: CampaignRules


class ExcludedOut(BaseModel):
    offer_id: str
    title: str
    reason: str


class StoreOffersOut(BaseModel):
    store_id: str
    channel: str
    at: InstantOut = Field(description="the instant the offers were judged at")
    rules_revision: int
    eligible: list[OfferJson] = Field(description="offers, highest priority first, then the lowest canonical price")
    excluded: list[ExcludedOut]


_OFFER_SCHEMA = Offer.model_json_schema()
_OFFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _OFFER_SCHEMA}}}}
_OFFER_OUT = {"application/json": {"schema": OFFER_OUT_SCHEMA}}
_STOCK_OUT = {"application/json": {"schema": {"type": "object", "additionalProperties": {"type": "integer"},
                                              "description": "{item_id: quantity}"}}}


# offers ----------------------------------------------------------------------------------------------

@router.put("/offers/{offer_id}", tags=["offers"], summary="create or replace one offer",
            openapi_extra=_OFFER_BODY, responses={**BODY_PROBLEMS, 200: {"description": "replaced", "content": _OFFER_OUT},
                                                  201: {"description": "created", "content": _OFFER_OUT}})
async def put_offer(offer_id: OfferId, _: OperatorDep, body: JsonBody, c: ContainerDep) -> Response:
    offer, created = await c.catalog.put_offer(offer_id, body)
    return _json(_offer_out(offer), 201 if created else 200)


@router.post("/offers", tags=["offers"], response_model=BulkOffersOut,
             summary=f"bulk upsert of up to {MAX_BULK_OFFERS} offers; each item judged alone",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "object", "properties": {"offers": {"type": "array", "maxItems": MAX_BULK_OFFERS,
                                                             "items": _OFFER_SCHEMA}}}}}}},
             responses={**BODY_PROBLEMS, 413: problem(f"more than {MAX_BULK_OFFERS} offers, or body too large")})
async def bulk_offers(_: OperatorDep, body: JsonBody, c: ContainerDep) -> Response:
    """A JSON array of offers (each with its `offer_id`), or `{"offers": [...]}`. Valid items are
    stored, invalid ones reported with their index and reason."""
    r = await c.catalog.bulk(body)
    return _json({"created": r.created, "updated": r.updated, "rejected": r.rejected, "warnings": r.warnings})


@router.get("/offers", tags=["offers"], response_model=OfferPageOut, summary="the catalogue, by offer id, paged")
async def list_offers(_: CatalogReaderDep, c: ContainerDep,
                      store_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN,
                                                            description="offers that may run at this store")] = None,
                      channel: Annotated[Channel | None, Query(description="offers shown on this channel")] = None,
                      active_at: Annotated[str | None, Query(max_length=40, description="offers valid at this "
                                                             f"instant: {INSTANT_PARAM}")] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      after: Annotated[str | None, Query(description="cursor: next_after of the previous page")] = None
                      ) -> Response:
    page, next_after = await c.catalog.list_offers(store_id=store_id, channel=channel, limit=limit, after=after,
                                                   active_at=instant_param(active_at, "active_at"))
    return _json({"offers": [_offer_out(o) for o in page], "next_after": next_after})


@router.get("/offers/{offer_id}", tags=["offers"], summary="one offer; the same price whatever the channel",
            responses={200: {"description": "the offer", "content": _OFFER_OUT}})
async def get_offer(offer_id: OfferId, _: OfferReaderDep, c: ContainerDep,
                    channel: Annotated[Channel | None, Query(description="adds available_on_channel")] = None
                    ) -> Response:
    return _json(_offer_out(await c.catalog.get_offer(offer_id), channel))


@router.delete("/offers/{offer_id}", tags=["offers"], status_code=204, summary="delete an offer")
async def delete_offer(offer_id: OfferId, _: OperatorDep, c: ContainerDep) -> Response:
    await c.catalog.delete_offer(offer_id)
    return Response(status_code=204)


# store stock -----------------------------------------------------------------------------------------

_STOCK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": {"type": "integer"}, "example": {"85123A": 12, "22423": 0}}}}}}


@router.get("/stores/{store_id}/inventory", tags=["stock"], summary="units held per item: {item_id: quantity}",
            responses={200: {"description": "the stock", "content": _STOCK_OUT}})
async def get_inventory(store_id: StoreId, _: CatalogReaderDep, c: ContainerDep) -> Response:
    return _json(await c.catalog.stock(store_id))


@router.put("/stores/{store_id}/inventory", tags=["stock"], openapi_extra=_STOCK_BODY,
            summary="replace a store's stock: {item_id: non-negative integer}",
            responses={**BODY_PROBLEMS, 200: {"description": "the new stock", "content": _STOCK_OUT}})
async def put_inventory(store_id: StoreId, _: OperatorDep, body: JsonBody, c: ContainerDep) -> Response:
    return _json(await c.catalog.replace_stock(store_id, _validated(_QUANTITIES, body)))


@router.patch("/stores/{store_id}/inventory", tags=["stock"], openapi_extra=_STOCK_BODY,
              summary="add signed deltas {item_id: integer}; all or nothing",
              responses={**BODY_PROBLEMS, 200: {"description": "the patched items' new quantities", "content": _STOCK_OUT},
                         409: problem("a quantity would go below zero; nothing was changed")})
async def patch_inventory(store_id: StoreId, _: OperatorDep, body: JsonBody, c: ContainerDep) -> Response:
    """Answers the new quantities of the patched items."""
    return _json(await c.catalog.patch_stock(store_id, _validated(_DELTAS, body)))


# campaign rules --------------------------------------------------------------------------------------

def _rules_out(doc: RulesDocument) -> Response:
    return _json(rfc3339_fields(doc.to_public(), "updated_at"), headers={"ETag": f'"{doc.revision}"'})


def _expected_revision(if_match: str | None) -> int | None:
    revision = if_match_revision(if_match, "the rules")
    return None if revision == ANY else revision


@router.get("/rules", tags=["rules"], response_model=RulesOut, summary="the campaign switches, with their revision")
async def get_rules(_: CatalogReaderDep, c: ContainerDep) -> Response:
    return _rules_out(await c.catalog.rules())


@router.put("/rules", tags=["rules"], response_model=RulesOut,
            summary="replace the campaign switches; If-Match: the revision you read",
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": CampaignRules.model_json_schema()}}}},
            responses={**BODY_PROBLEMS, 412: problem("If-Match names another revision; nothing was changed")})
async def put_rules(_: OperatorDep, body: JsonBody, c: ContainerDep,
                    if_match: Annotated[str | None, Header(description='the ETag of your GET, e.g. "3"')] = None
                    ) -> Response:
    return _rules_out(await c.catalog.put_rules(body, _expected_revision(if_match)))


# what a store may show -------------------------------------------------------------------------------

@router.get("/stores/{store_id}/offers", tags=["offers"], response_model=StoreOffersOut,
            summary="offers eligible at a store now, and the excluded ones with their reason")
async def store_offers(store_id: StoreId, _: OfferReaderDep, c: ContainerDep,
                       channel: Annotated[Channel, Query()] = "store",
                       at: Annotated[str | None, Query(max_length=40, description="instant to judge at "
                                                       f"(default now): {INSTANT_PARAM}")] = None) -> Response:
    r = await c.catalog.offers_at_store(store_id, channel, instant_param(at, "at"))
    return _json({"store_id": store_id, "channel": r.channel, "at": rfc3339(r.at), "rules_revision": r.rules_revision,
                  "eligible": [_offer_out(o) for o in r.verdicts.eligible],
                  "excluded": [{"offer_id": o.offer_id, "title": o.title, "reason": reason}
                               for o, reason in r.verdicts.excluded]})
