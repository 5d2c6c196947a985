"""The offers a customer should see, and which model ranks them."""
from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from vicino.services.kernel.contracts.interactions import Channel
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.times import InstantOut, rfc3339, rfc3339_fields

from .deps import ContainerDep, CustomerOffersDep, ModelReaderDep
from .schemas import PROBLEMS

router = APIRouter(prefix="/v1", responses=PROBLEMS)
CustomerId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN)]


class RankedOfferOut(BaseModel):
    rank: int = Field(description="1 is the best")
    offer_id: str
    title: str
    body: str
    item_ids: list[str]
    price: float = Field(description="the offer's one (canonical) price")
    regular_price: float
    currency: str
    fulfilment: str
    valid_to: InstantOut = Field(description="exclusive end of validity")
    score: float
    reason: str = Field(description="model, cold_start_features or popular_fallback")


class RankingOut(BaseModel):
    customer_id: str
    store_id: str | None
    channel: str
    model_version: str | None = Field(description="null when no model serves (features-only ranking)")
    generated_at: InstantOut
    offers: list[RankedOfferOut] = Field(description="best first")


class DataWindowOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # rows, source, format, users, items, ... as the training wrote them

    start: InstantOut | None = Field(None, description="the first interaction trained on")
    end: InstantOut | None = Field(None, description="the last interaction trained on")


class ModelInfoOut(BaseModel):
    """The fields after model_dir are there only while a model serves."""
    serving: str | None
    loaded_at: InstantOut | None
    failed_version: str | None
    failure: str | None
    model_dir: str
    created_at: InstantOut | None = None
    data_window: DataWindowOut | None = Field(None, description="the training data: its time span, rows, source")
    metrics: dict | None = None
    settings: dict | None = None
    users: int | None = None
    items: int | None = None
    user_features: int | None = None
    item_features: int | None = None


@router.get("/customers/{customer_id}/offers", tags=["offers"],
            summary="the top-k offers for a customer, at a store or on a channel, with price and reason",
            responses={200: {"model": RankingOut}})
async def customer_offers(customer_id: CustomerId, _: CustomerOffersDep, c: ContainerDep,
                          store_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN,
                                                                description="rank the offers valid at this store")] = None,
                          k: Annotated[int, Query(ge=1, le=100)] = 10,
                          channel: Channel = "app") -> Response:
    """An unknown customer is ranked from features (cold start), not refused; an unknown store is
    a 404. The order is the same on every channel: the channel only decides which offers are
    eligible."""
    customer = await c.identity.canonical(customer_id)
    consent = await c.devices.consent(customer)
    ranking = await c.ranker.rank(customer, personalisation=consent["personalisation"], store_id=store_id,
                                  channel=channel, k=k)
    body = ranking.to_public()
    body["generated_at"] = rfc3339(body["generated_at"])
    body["offers"] = [rfc3339_fields(o, "valid_to") for o in body["offers"]]
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/model", tags=["offers"], summary="which model version serves, its data window and metrics",
            responses={200: {"model": ModelInfoOut}})
async def model_info(_: ModelReaderDep, c: ContainerDep) -> Response:
    holder = c.models
    m = holder.model
    status = holder.status
    body = {"serving": status.serving, "loaded_at": rfc3339(status.loaded_at), "failed_version": status.failed_version,
            "failure": status.failure, "model_dir": holder.root}
    if m is not None:
        man = m.manifest
        body.update(created_at=rfc3339(man.created_at), data_window=rfc3339_fields(man.data_window, "start", "end"),
                    metrics=man.metrics,
                    settings=man.settings, users=sum(u is not None for u in man.user_ids), items=len(man.item_ids),
                    user_features=len(man.user_features), item_features=len(man.item_features))
    return Response(orjson.dumps(body), media_type="application/json")
