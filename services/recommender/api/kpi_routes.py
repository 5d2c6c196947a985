"""The marketing KPIs: GET /v1/kpis for any period (store, offer, attribution window), and the
daily roll-ups at GET /v1/kpis/daily."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.problems import InvalidInput

from ..domain.offers import to_epoch
from ..use_cases.kpis import KpiQuery
from .deps import AnalystDep, ContainerDep
from .schemas import PROBLEMS, KpiReportOut

router = APIRouter(prefix="/v1", responses=PROBLEMS)
MAX_SPAN_DAYS = 400
DEFAULT_SPAN_DAYS = 7
Instant = Annotated[str | None, Query(max_length=40, description="RFC 3339 with an offset, or a date YYYY-MM-DD "
                                      "(a `from` date is the day's start, a `to` date includes that day, UTC)")]


class KpiDaysOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="first day, YYYY-MM-DD (UTC)")
    to: str = Field(description="last day, YYYY-MM-DD (UTC)")
    days: list[dict] = Field(description="the rolled-up days, oldest first")
    empty: bool


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _instant(name: str, value: str, end_of_day: bool) -> float:
    v = value.strip()
    if len(v) == 10 and v[4] == "-" and v[7] == "-":
        try:
            day = datetime.fromisoformat(v).replace(tzinfo=timezone.utc)
            return (day + timedelta(days=1) if end_of_day else day).timestamp()
        except (ValueError, OverflowError):  # 9999-12-31 as a `to` date has no next day
            raise InvalidInput(f"{name}: {value!r} is not a date Vicino can use",
                               errors=[{"loc": f"query.{name}", "msg": "not a date"}]) from None
    try:
        return to_epoch(v)
    except ValueError as e:
        raise InvalidInput(f"{name}: {e}", errors=[{"loc": f"query.{name}", "msg": str(e)}]) from None


def period(c, from_: str | None, to: str | None) -> tuple[float, float]:
    end = _instant("to", to, True) if to else c.clock.now()
    start = _instant("from", from_, False) if from_ else end - DEFAULT_SPAN_DAYS * 86_400
    if start >= end:
        raise InvalidInput(f"from ({datetime.fromtimestamp(start, timezone.utc).isoformat()}) must be before to "
                           f"({datetime.fromtimestamp(end, timezone.utc).isoformat()})",
                           errors=[{"loc": "query.from", "msg": "after or equal to `to`"}])
    if end - start > MAX_SPAN_DAYS * 86_400:
        raise InvalidInput(f"a period is at most {MAX_SPAN_DAYS} days; for longer ones read /v1/kpis/daily",
                           errors=[{"loc": "query.from", "msg": "period too long"}])
    return start, end


@router.get("/kpis", tags=["kpis"], summary="decisions, deliveries, conversions by attribution key, revenue, "
            "repurchase and the uplift against the holdout group over a period",
            responses={200: {"model": KpiReportOut}})
async def kpis(_: AnalystDep, c: ContainerDep,
               from_: Annotated[str | None, Query(alias="from", max_length=40,
                                                  description="start (default: 7 days before `to`)")] = None,
               to: Instant = None,
               store_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
               offer_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
               window_h: Annotated[float | None, Query(gt=0, le=720, description="attribution window, hours "
                                                       "(default VICINO_ATTRIBUTION_WINDOW_H)")] = None) -> Response:
    start, end = period(c, from_, to)
    window_s = (window_h or c.settings.attribution_window_h) * 3600
    return _json(await c.kpis.report(KpiQuery(start, end, window_s, store_id, offer_id)))


@router.get("/kpis/daily", tags=["kpis"], summary="the daily KPI roll-ups (days whose figures are final)",
            responses={200: {"model": KpiDaysOut}})
async def kpis_daily(_: AnalystDep, c: ContainerDep, from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
                     to: Instant = None) -> Response:
    start, end = period(c, from_, to)
    first = datetime.fromtimestamp(start, timezone.utc).date().isoformat()
    last = datetime.fromtimestamp(end - 1e-6, timezone.utc).date().isoformat()
    days = await c.kpis.daily(first, last)
    return _json({"from": first, "to": last, "days": days, "empty": not days})
