"""Routes of the campaigns and of the answers people ask about them: what a campaign would do
(preview), a test send, and why a visit did or did not get a push.

Writes are the operator's; reading campaigns the operator's and the analyst's; a decision's
explanation also the support desk's (it is about one customer). OperatorDep comes before
JsonBody: no body is read for an unauthorised caller.
"""
from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from vicino.services.kernel.contracts.decisions import CampaignOutcomeV1, MessageV1
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.problems import InvalidInput, invalid_input
from vicino.services.kernel.times import InstantOut, rfc3339
from vicino.services.runtime.api_keys import role_dependency
from vicino.services.runtime.http_edge import INSTANT_PARAM, JsonBody, instant_param

from ..adapters.push_jobs import PushJobQueue
from ..domain.campaigns import Audience, CampaignIn, Limits, Message, OfferPool, Status, Trigger
from ..domain.messages import canonical_locale
from ..use_cases.campaigns import to_public
from .deps import CatalogReaderDep, ContainerDep, OperatorDep, caller
from .revisions import if_match_revision
from .schemas import BODY_PROBLEMS, PROBLEMS, problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)
CampaignId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, description="client-chosen campaign id")]
VisitId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, description="the visit id of the geo service's events")]
CustomerId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN)]
PreviewerDep = role_dependency(caller, "operator", "support")
ExplainerDep = role_dependency(caller, "operator", "analyst", "support")
IfMatch = Annotated[str | None, Header(description='the ETag of your GET, e.g. "3"')]


def _inlined(schema: dict) -> dict:
    """A model's JSON schema with its `$defs` written in place: the request body is documented
    inline (its validation is the use case's), and `#/$defs/...` means nothing inside OpenAPI."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk({**defs[ref.rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


def _json(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _revision(if_match: str | None) -> int | str | None:
    return if_match_revision(if_match, "the campaign")


# --- documented shapes ---------------------------------------------------------------------------

class SpendOut(BaseModel):
    today: int = Field(description="pushes sent today, in the campaign's time zone")
    total: int
    per_day_budget: int | None
    total_budget: int | None


class CampaignOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "a campaign as stored; the ETag is its revision"})

    campaign_id: str
    revision: int
    name: str
    status: Status
    starts_at: InstantOut | None
    ends_at: InstantOut | None
    hours: str | None
    timezone: str
    priority: int
    trigger: Trigger
    audience: Audience
    offers: OfferPool
    limits: Limits
    message: Message | None
    created_at: InstantOut
    updated_at: InstantOut
    spend: SpendOut


class CampaignListOut(BaseModel):
    campaigns: list[CampaignOut]
    default_active: bool = Field(description="true while no campaign is stored: the default campaign built from "
                                 "the VICINO_* settings decides")


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=CLIENT_ID_PATTERN)
    store_id: str = Field(pattern=CLIENT_ID_PATTERN)
    locale: str | None = Field(None, max_length=35, description="BCP 47; default the customer's device's, then the "
                               "CRM's, then the campaign's default")
    event_type: Literal["enter", "dwell"] | None = None


class PreviewOfferOut(BaseModel):
    offer_id: str
    score: float
    rank_reason: str
    model_version: str | None


class PreviewOut(BaseModel):
    campaign_id: str
    revision: int
    status: Status
    customer_id: str
    store_id: str
    event_type: str
    at: InstantOut
    global_reason: str | None = Field(description="the global protection that would stop any push now, if any")
    would_send: bool
    outcome: Literal["sent", "held_out", "suppressed"]
    reason: str | None = Field(description="the campaign's reason not to send (also `ended`, `not_triggered_here`)")
    offer: PreviewOfferOut | None
    message: MessageV1 | None


class TestSendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=CLIENT_ID_PATTERN)
    store_id: str | None = Field(None, pattern=CLIENT_ID_PATTERN, description="the store whose name and offers fill "
                                 "the message; default the campaign's first store")


class TestSendOut(BaseModel):
    job_id: str
    campaign_id: str
    device_id: str
    store_id: str
    offer_id: str
    title: str
    body: str
    test: bool


class EventOut(BaseModel):
    event_id: str
    type: str
    ts: InstantOut


class ExplainedCampaignOut(CampaignOutcomeV1):
    name: str | None


class DecisionOfferOut(BaseModel):
    offer_id: str
    score: float | None
    price: float | None
    currency: str | None
    rank_reason: str | None
    model_version: str | None


class DeliveryStepOut(BaseModel):
    status: str
    at: InstantOut


class DeliveryOut(BaseModel):
    delivery_id: str
    status: str
    reason: str | None
    provider: str | None
    attempts: int
    created_at: InstantOut | None
    opened_at: InstantOut | None
    history: list[DeliveryStepOut]


class DecisionOut(BaseModel):
    decision_id: str
    visit_id: str
    store_id: str
    device_id: str
    event: EventOut
    decided_at: InstantOut
    outcome: Literal["send", "suppress"]
    reason: str | None
    holdout: bool
    campaign_id: str | None
    campaigns: list[ExplainedCampaignOut]
    offer: DecisionOfferOut | None
    message: MessageV1 | None
    job_id: str | None
    delivery: DeliveryOut | None = Field(description="null: no push, or the gateway has not taken it yet")


class StoreRefOut(BaseModel):
    store_id: str
    name: str | None
    brand: str | None


class VisitDecisionOut(BaseModel):
    visit_id: str
    customer_id: str
    device_id: str
    store: StoreRefOut
    decisions: list[DecisionOut] = Field(description="oldest first: an enter decided without a push, then the dwell")


class CustomerDecisionsOut(BaseModel):
    customer_id: str
    decisions: list[DecisionOut]
    next_before: InstantOut | None


# --- the campaigns -----------------------------------------------------------------------------

@router.get("/campaigns", tags=["campaigns"], response_model=CampaignListOut,
            summary="every campaign, with its spend against its budget")
async def list_campaigns(_: CatalogReaderDep, c: ContainerDep,
                         status: Annotated[Status | None, Query(description="only campaigns in this status")] = None
                         ) -> Response:
    campaigns = await c.campaigns.list(status)
    spend = await c.campaigns.spend(campaigns)
    snap = await c.campaigns.snapshot()
    return _json({"campaigns": [to_public(x, spend.get(x.campaign_id)) for x in campaigns],
                  "default_active": not snap.defined})


@router.get("/campaigns/{campaign_id}", tags=["campaigns"], response_model=CampaignOut,
            summary="one campaign; its ETag is the revision to send back in If-Match")
async def get_campaign(campaign_id: CampaignId, _: CatalogReaderDep, c: ContainerDep) -> Response:
    x = await c.campaigns.get(campaign_id)
    spend = await c.campaigns.spend([x])
    return _json(to_public(x, spend.get(campaign_id)), headers={"ETag": f'"{x.revision}"'})


@router.put("/campaigns/{campaign_id}", tags=["campaigns"], response_model=CampaignOut,
            summary="create or replace a campaign (If-Match: the ETag you read, when it exists)",
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": _inlined(CampaignIn.model_json_schema())}}}},
            responses={**BODY_PROBLEMS, 201: {"description": "created", "model": CampaignOut},
                       409: problem("a status change that is not allowed (e.g. from ended)"),
                       412: problem("If-Match names another revision; nothing was changed"),
                       428: problem("the campaign exists and If-Match is missing")})
async def put_campaign(campaign_id: CampaignId, _: OperatorDep, body: JsonBody, c: ContainerDep,
                       if_match: IfMatch = None) -> Response:
    x, created = await c.campaigns.put(campaign_id, body, _revision(if_match))
    spend = await c.campaigns.spend([x])
    return _json(to_public(x, spend.get(campaign_id)), 201 if created else 200, headers={"ETag": f'"{x.revision}"'})


@router.delete("/campaigns/{campaign_id}", tags=["campaigns"], status_code=204,
               summary="remove a draft; end any other campaign (kept for its KPIs)",
               responses={200: {"description": "the campaign, now ended", "model": CampaignOut},
                          204: {"description": "the draft was removed"},
                          412: problem("If-Match names another revision; nothing was changed")})
async def delete_campaign(campaign_id: CampaignId, _: OperatorDep, c: ContainerDep,
                          if_match: IfMatch = None) -> Response:
    ended = await c.campaigns.delete(campaign_id, _revision(if_match))
    if ended is None:
        return Response(status_code=204)
    spend = await c.campaigns.spend([ended])
    return _json(to_public(ended, spend.get(campaign_id)), headers={"ETag": f'"{ended.revision}"'})


@router.post("/campaigns/{campaign_id}/preview", tags=["campaigns"], response_model=PreviewOut,
             summary="what the campaign would send now to this customer at this store, and why or why not; "
                     "nothing is recorded or sent",
             responses={**BODY_PROBLEMS})
async def preview_campaign(campaign_id: CampaignId, _: PreviewerDep, body: JsonBody, c: ContainerDep) -> Response:
    req = _model(PreviewIn, body)
    campaign = await c.campaigns.get(campaign_id)
    locale = None
    if req.locale is not None:
        try:
            locale = canonical_locale(req.locale)
        except ValueError as e:
            raise InvalidInput(f"locale: {e}", errors=[{"field": "locale", "message": str(e)}]) from None
    out = await c.visits.preview(campaign, req.customer_id, req.store_id, locale, req.event_type)
    out["at"] = rfc3339(out["at"])
    return _json(out)


@router.post("/campaigns/{campaign_id}/test-sends", tags=["campaigns"], response_model=TestSendOut,
             status_code=202, summary="send the campaign's message to one device, marked as a test (never in the "
                                      "KPIs; caps, hours, audience and holdout do not apply)",
             responses={**BODY_PROBLEMS, 409: problem("no offer of the campaign is eligible at the store")})
async def test_send(campaign_id: CampaignId, _: OperatorDep, body: JsonBody, c: ContainerDep) -> Response:
    req = _model(TestSendIn, body)
    campaign = await c.campaigns.get(campaign_id)
    store_id = req.store_id or (campaign.spec.trigger.store_ids or [None])[0]
    if store_id is None:
        raise InvalidInput("store_id: the campaign runs at every store; name the store whose name and offers fill "
                           "the message", errors=[{"field": "store_id", "message": "required for this campaign"}])
    job = await c.visits.test_job(campaign, req.device_id, store_id)
    await PushJobQueue(c.redis, c.settings.customer_shards).queue(job)
    return _json({"job_id": job.job_id, "campaign_id": campaign_id, "device_id": req.device_id, "store_id": store_id,
                  "offer_id": job.data.offer_id, "title": job.title, "body": job.body, "test": True}, 202)


# --- why ---------------------------------------------------------------------------------------

@router.get("/visits/{visit_id}/decision", tags=["decisions"], response_model=VisitDecisionOut,
            summary="why this visit did (or did not) get a push: every campaign's outcome, the offer, the message "
                    "and the delivery")
async def visit_decision(visit_id: VisitId, _: ExplainerDep, c: ContainerDep) -> Response:
    return _json(await c.explanations.for_visit(visit_id))


@router.get("/customers/{customer_id}/decisions", tags=["decisions"], response_model=CustomerDecisionsOut,
            summary="the customer's recent visit decisions, newest first, each explained")
async def customer_decisions(customer_id: CustomerId, _: ExplainerDep, c: ContainerDep,
                             limit: Annotated[int, Query(ge=1, le=100)] = 20,
                             before: Annotated[str | None, Query(max_length=40, description="decided before this "
                                                                 f"instant: {INSTANT_PARAM}")] = None) -> Response:
    return _json(await c.explanations.for_customer(customer_id, limit, instant_param(before, "before")))


def _model(model: type[BaseModel], body):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise invalid_input(e) from None
