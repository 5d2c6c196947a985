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
from vicino.services.kernel.times import InstantOut, rfc3339, rfc3339_fields
from vicino.services.runtime.http_edge import instant_param

from ..use_cases.kpis import KpiQuery
from .deps import AnalystDep, ContainerDep
from .schemas import PROBLEMS, KpiReportOut

router = APIRouter(prefix="/v1", responses=PROBLEMS)
MAX_SPAN_DAYS = 400
DEFAULT_SPAN_DAYS = 7
Instant = Annotated[str | None, Query(max_length=40, description="RFC 3339 with an offset, epoch seconds, or a "
                                      "date YYYY-MM-DD (a `from` date is the day's start, a `to` date includes that "
                                      "day, UTC)")]


class KpiDayOut(BaseModel):
    date: str = Field(description="YYYY-MM-DD (UTC)", json_schema_extra={"format": "date"})
    report: KpiReportOut = Field(description="the day's report (without notes)")
    rolled_at: InstantOut = Field(description="when the kpi_rollup job computed it")


class KpiDaysOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="first day, YYYY-MM-DD (UTC)", json_schema_extra={"format": "date"})
    to: str = Field(description="last day, YYYY-MM-DD (UTC)", json_schema_extra={"format": "date"})
    days: list[KpiDayOut] = Field(description="the rolled-up days, oldest first")
    empty: bool


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _instant(name: str, value: str, end_of_day: bool) -> float:
    """A date (YYYY-MM-DD, UTC: a `to` date includes its day), else RFC 3339 or epoch seconds."""
    v = value.strip()
    if len(v) == 10 and v[4] == "-" and v[7] == "-":
        try:
            day = datetime.fromisoformat(v).replace(tzinfo=timezone.utc)
            return (day + timedelta(days=1) if end_of_day else day).timestamp()
        except (ValueError, OverflowError):  # 9999-12-31 as a `to` date has no next day
            raise InvalidInput(f"{name}: {value!r} is not a date Vicino can use",
                               errors=[{"field": f"query.{name}", "message": "not a date"}]) from None
    return instant_param(v, name)


def _report_out(report: dict) -> dict:
    return {**report, "period": {"from": rfc3339(report["period"]["from"]), "to": rfc3339(report["period"]["to"])}}


def period(c, from_: str | None, to: str | None) -> tuple[float, float]:
    end = _instant("to", to, True) if to else c.clock.now()
    start = _instant("from", from_, False) if from_ else end - DEFAULT_SPAN_DAYS * 86_400
    if start >= end:
        raise InvalidInput(f"from ({rfc3339(start)}) must be before to ({rfc3339(end)})",
                           errors=[{"field": "query.from", "message": "after or equal to `to`"}])
    if end - start > MAX_SPAN_DAYS * 86_400:
        raise InvalidInput(f"a period is at most {MAX_SPAN_DAYS} days; for longer ones read /v1/kpis/daily",
                           errors=[{"field": "query.from", "message": "period too long"}])
    return start, end


@router.get("/kpis", tags=["kpis"], summary="decisions, deliveries, conversions by attribution key, revenue, "
            "repurchase and the uplift against the holdout group over a period, per store and per campaign; "
            "retention, upselling, NPS and the care channel's responsiveness",
            responses={200: {"model": KpiReportOut}})
async def kpis(_: AnalystDep, c: ContainerDep,
               from_: Annotated[str | None, Query(alias="from", max_length=40, description="start (default: 7 days "
                                                  "before `to`); as `to`")] = None,
               to: Instant = None,
               store_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
               offer_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN)] = None,
               campaign_id: Annotated[str | None, Query(pattern=CLIENT_ID_PATTERN, description="only this campaign's "
                                                        "decisions (those it sent or held out), against its own "
                                                        "holdout; an unknown campaign gives an empty report")] = None,
               window_h: Annotated[float | None, Query(gt=0, le=720, description="attribution window, hours "
                                                       "(default VICINO_ATTRIBUTION_WINDOW_H)")] = None) -> Response:
    start, end = period(c, from_, to)
    window_s = (window_h or c.settings.attribution_window_h) * 3600
    return _json(_report_out(await c.kpis.report(KpiQuery(start, end, window_s, store_id, offer_id, campaign_id))))


@router.get("/kpis/daily", tags=["kpis"], summary="the daily KPI roll-ups (days whose figures are final)",
            responses={200: {"model": KpiDaysOut}})
async def kpis_daily(_: AnalystDep, c: ContainerDep,
                     from_: Annotated[str | None, Query(alias="from", max_length=40, description="as `to`")] = None,
                     to: Instant = None) -> Response:
    start, end = period(c, from_, to)
    first = datetime.fromtimestamp(start, timezone.utc).date().isoformat()
    last = datetime.fromtimestamp(end - 1e-6, timezone.utc).date().isoformat()
    days = await c.kpis.daily(first, last)
    return _json({"from": first, "to": last, "empty": not days,
                  "days": [{**rfc3339_fields(d, "rolled_at"), "report": _report_out(d["report"])} for d in days]})
