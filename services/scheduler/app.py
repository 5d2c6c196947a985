"""`create_app`: the scheduler as an ASGI app: APScheduler firing the jobs it is handed (each run
under its Redis lock, see use_cases/run_job.py) and the jobs API. Nothing connects until the app
starts. Run one replica, or several: a scheduled occurrence is claimed by one replica only."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from datetime import datetime, timezone
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from vicino.services.runtime.api_keys import AuditTrail
from vicino.services.runtime.http_edge import install_edge, redis_check
from vicino.services.kernel.jobs import JobDefinition
from vicino.services.runtime.redis_client import service_redis

from .api import routes
from .domain.schedules import Schedule
from .settings import SchedulerSettings
from .wiring import SchedulerContainer, build

log = logging.getLogger("vicino.scheduler")
MISFIRE_GRACE_S = 300  # a firing missed by less than this (a busy loop, a paused process) still runs


def _trigger(schedule: Schedule, tz):
    if schedule.kind == "every":
        # aligned to the epoch, so every replica fires at the same wall-clock times
        return IntervalTrigger(seconds=schedule.period_s, start_date=datetime(1970, 1, 1, tzinfo=timezone.utc))
    return CronTrigger(hour=schedule.hour, minute=schedule.minute, timezone=tz)


def start_scheduler(c: SchedulerContainer) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=c.settings.tz)
    for name, schedule in sorted(c.schedules.items()):
        if schedule.kind == "off":
            continue

        async def fire(name: str = name) -> None:
            result = await c.runner.run(name, "schedule")
            if result.status != "ran":  # another replica has it: nothing to do here
                log.debug("scheduled run skipped", extra={"fields": {"job": name, "why": result.status}})

        scheduler.add_job(fire, _trigger(schedule, c.settings.tz), id=name, name=name, coalesce=True,
                          max_instances=1, misfire_grace_time=MISFIRE_GRACE_S)
    scheduler.start()
    return scheduler


def create_app(settings: SchedulerSettings, jobs: list[JobDefinition], *, redis=None, run_schedule: bool = True,
               host: str | None = None) -> FastAPI:
    """`jobs`: every job this scheduler runs (services/cli/job_catalog.py collects them).
    `run_schedule=False` serves the API without firing anything (tests)."""
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_redis(settings.redis_url, settings.redis_wait_s, log, redis, hot_path=False) as (r, _):
            container = app.state.container = build(settings, r, jobs, host=host, registry=registry)
            app.state.audit = AuditTrail(r, settings.audit_retention_days, settings.token_secret)
            app.state.scheduler = start_scheduler(container) if run_schedule else None
            log.info("scheduler ready", extra={"fields": {
                "jobs": {n: str(s) for n, s in sorted(container.schedules.items())}, "firing": run_schedule}})
            try:
                yield
            finally:
                if app.state.scheduler is not None:
                    app.state.scheduler.shutdown(wait=False)
                # a run cut short is recorded as failed ("cancelled"); its occurrence is not re-run
                running = list(container.runner.active)
                for t in running:
                    t.cancel()
                if running:
                    await asyncio.wait(running, timeout=10)

    app = FastAPI(title="Vicino scheduler", version="1", lifespan=lifespan,
                  description="Runs the periodic jobs (retraining, export, erasures applied to the Parquet log, "
                              "stream housekeeping, KPI roll-ups), one run at a time across replicas, and shows "
                              "their runs. Authenticate with `Authorization: Bearer <admin token>`.")

    async def ready() -> dict[str, str]:
        container = getattr(app.state, "container", None)
        return {"redis": await redis_check(container and container.redis)}

    app.include_router(routes.router)
    install_edge(app, service="scheduler", registry=registry, ready=ready, max_body_bytes=64 * 1024)
    return app
