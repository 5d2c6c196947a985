"""Running one job: claim its occurrence (scheduled runs), take its lock, record the run, keep
the lease alive while it works, record how it ended. A failing job is logged with its error
and recorded as failed; it runs again at its next occurrence, and nothing else stops."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Literal

from vicino.services.kernel.jobs import JobContext, JobDefinition, Progress, no_progress

from ..adapters.run_store import RunStore
from ..domain.runs import JobRun, Trigger
from ..domain.schedules import Schedule

log = logging.getLogger("vicino.scheduler")


class UnknownJob(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no job {name!r}; the jobs are: {', '.join(known)}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class RunResult:
    status: Literal["ran", "locked", "done_elsewhere"]
    run: JobRun | None = None
    holder: dict | None = None


class JobRunner:
    def __init__(self, jobs: list[JobDefinition], store: RunStore, redis, schedules: dict[str, Schedule],
                 tz, host: str | None = None, observe: Callable[[JobRun], None] | None = None) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.store = store
        self.redis = redis
        self.schedules = schedules
        self.tz = tz
        self.host = host or f"{socket.gethostname()}-{os.getpid()}"
        self.active: set[asyncio.Task] = set()  # runs in progress in this process
        self.observe = observe  # metrics: told of every run that ended

    def job(self, name: str) -> JobDefinition:
        if name not in self.jobs:
            raise UnknownJob(name, sorted(self.jobs))
        return self.jobs[name]

    async def run(self, name: str, trigger: Trigger = "manual", progress: Progress = no_progress,
                  now: float | None = None) -> RunResult:
        job = self.job(name)
        started = time.time() if now is None else now
        occurrence = None
        if trigger == "schedule":
            schedule = self.schedules[name]
            occurrence = (schedule.kind, schedule.occurrence(started, self.tz))
        run = JobRun(job=name, run_id=uuid.uuid4().hex[:16], trigger=trigger, host=self.host, started_at=started)
        began = await self.store.begin(run, job.lease_s, occurrence)
        if began == 0:
            return RunResult("locked", holder=await self.store.holder(name))
        if began < 0:
            return RunResult("done_elsewhere")
        log.info("job started", extra={"fields": {"job": name, "run_id": run.run_id, "trigger": trigger}})
        me = asyncio.current_task()
        self.active.add(me)
        keeper = asyncio.create_task(self._keep_lease(run, job.lease_s))
        try:
            summary = await job.run(JobContext(self.redis, progress, logging.getLogger(f"vicino.jobs.{name}")))
            run = run.finished(time.time(), summary if isinstance(summary, dict) else {"result": summary})
            log.info("job ended", extra={"fields": {"job": name, "run_id": run.run_id, "seconds": run.duration_s,
                                                    "summary": run.summary}})
        except asyncio.CancelledError:
            run = run.failed(time.time(), RuntimeError("cancelled (the scheduler stopped)"))
            raise
        except Exception as e:  # noqa: BLE001  a failing job must never take the scheduler down
            run = run.failed(time.time(), e)
            log.exception("job failed", extra={"fields": {"job": name, "run_id": run.run_id}})
        finally:
            self.active.discard(me)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if self.observe:
                self.observe(run)
            try:
                await self.store.end(run)
            except Exception:  # Redis away: the lease runs out, and the run shows as lost
                log.exception("could not record the end of a job run", extra={"fields": {"job": name}})
        return RunResult("ran", run)

    async def _keep_lease(self, run: JobRun, lease_s: float) -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                if not await self.store.renew(run, lease_s):
                    log.error("job run lost its lock (lease expired): another run may start",
                              extra={"fields": {"job": run.job, "run_id": run.run_id}})
                    return
            except Exception:
                log.warning("could not renew a job run's lease", exc_info=True, extra={"fields": {"job": run.job}})
