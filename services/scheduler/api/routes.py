"""GET /v1/jobs: every job with its schedule, next firing on this replica, the run in progress
and the last one; GET /v1/jobs/{name}: its recent runs; POST /v1/jobs/{name}/runs: run it now."""
from __future__ import annotations

import asyncio
import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from vicino.services.kernel.auth import Principal
from vicino.services.runtime.api_keys import role_dependency
from vicino.services.kernel.problems import Conflict, NotFound
from vicino.services.kernel.times import InstantOut, rfc3339, rfc3339_fields

from ..domain.runs import JobRun
from ..use_cases.run_job import UnknownJob
from ..wiring import SchedulerContainer
from .schemas import PROBLEMS, problem

router = APIRouter(prefix="/v1", responses=PROBLEMS)
JobName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="a job's name (see GET /v1/jobs)")]


async def container(request: Request) -> SchedulerContainer:
    return request.app.state.container


ContainerDep = Annotated[SchedulerContainer, Depends(container)]


async def caller(request: Request, c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    p = await c.access.principal(authorization, time.time(), request.scope)
    request.state.principal = p  # for the audit trail
    return p


JobReaderDep = role_dependency(caller, "operator", "analyst")
OperatorDep = role_dependency(caller, "operator")


class JobRunOut(BaseModel):
    job: str
    run_id: str
    trigger: str = Field(description="schedule, manual or api")
    host: str
    started_at: InstantOut
    outcome: str = Field(description="running, ok, failed or lost")
    ended_at: InstantOut | None
    error: str | None
    summary: dict = Field(description="what the job reports it did")
    duration_s: float | None


class RunningOut(BaseModel):
    run_id: str
    host: str
    started_at: InstantOut


class JobOut(BaseModel):
    name: str
    description: str
    schedule: str
    next_run_at: InstantOut | None = Field(description="null when off")
    running: RunningOut | None = Field(description="the run in progress anywhere")
    last_run: JobRunOut | None
    last_success_at: InstantOut | None


class JobsOut(BaseModel):
    jobs: list[JobOut]


class JobRunsOut(BaseModel):
    name: str
    description: str
    schedule: str
    last_run: JobRunOut | None
    last_success_at: InstantOut | None
    runs: list[JobRunOut] = Field(description="newest first")


class RunAcceptedOut(BaseModel):
    name: str
    accepted: bool
    see: str = Field(description="where to follow the run")


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _run(run: JobRun | None) -> dict | None:
    return rfc3339_fields(run.to_dict(), "started_at", "ended_at") if run else None


def _known(c: SchedulerContainer, name: str):
    try:
        return c.runner.job(name)
    except UnknownJob as e:
        raise NotFound(str(e)) from None


@router.get("/jobs", tags=["jobs"], summary="every job: schedule, next run, last run and outcome",
            responses={200: {"model": JobsOut}})
async def list_jobs(_: JobReaderDep, c: ContainerDep, request: Request) -> Response:
    names = sorted(c.runner.jobs)
    last = await c.runner.store.last_runs(names)
    now = time.time()
    out = []
    for name in names:
        job = c.runner.jobs[name]
        run, ok = last[name]
        holder = await c.runner.store.holder(name) if run and run.outcome == "running" else None
        next_at = c.schedules[name].next_at(now, c.settings.tz)
        out.append({"name": name, "description": job.description, "schedule": str(c.schedules[name]),
                    "next_run_at": rfc3339(next_at),
                    "running": rfc3339_fields(holder, "started_at") if holder else None,
                    "last_run": _run(run), "last_success_at": rfc3339(ok.ended_at) if ok else None})
    return _json({"jobs": out})


@router.get("/jobs/{name}", tags=["jobs"], summary="one job and its recent runs, newest first",
            responses={200: {"model": JobRunsOut}})
async def job_runs(name: JobName, _: JobReaderDep, c: ContainerDep,
                   limit: Annotated[int, Query(ge=1, le=50)] = 20) -> Response:
    job = _known(c, name)
    (run, ok), = (await c.runner.store.last_runs([name])).values()
    return _json({"name": name, "description": job.description, "schedule": str(c.schedules[name]),
                  "last_run": _run(run), "last_success_at": rfc3339(ok.ended_at) if ok else None,
                  "runs": [_run(r) for r in await c.runner.store.history(name, limit)]})


@router.post("/jobs/{name}/runs", tags=["jobs"], status_code=202,
             summary="run a job now (in the background); 409 while a run of it is in progress",
             responses={202: {"model": RunAcceptedOut, "description": "the run started"},
                        409: problem("a run of this job is in progress")})
async def run_now(name: JobName, _: OperatorDep, c: ContainerDep) -> Response:
    _known(c, name)
    holder = await c.runner.store.holder(name)
    if holder is not None:
        raise Conflict(f"{name} is running (run {holder['run_id']} on {holder['host']})")
    asyncio.create_task(c.runner.run(name, "api"))  # the runner keeps it (runner.active)
    return _json({"name": name, "accepted": True, "see": f"/v1/jobs/{name}"}, 202)
