"""The one place the scheduler's parts are put together: the jobs it is handed (the composition
root collects them from every service), their schedules, the run store and the runner."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from vicino.services.kernel.auth import TokenSigner
from vicino.services.runtime.rate_limit import RateLimiter
from vicino.services.runtime.api_keys import Authenticator
from vicino.services.kernel.jobs import JobDefinition

from .adapters.run_store import RunStore
from .domain.runs import JobRun
from .domain.schedules import Schedule, ScheduleError
from .settings import SchedulerSettings
from .use_cases.run_job import JobRunner


def resolve_schedules(jobs: list[JobDefinition], settings: SchedulerSettings) -> dict[str, Schedule]:
    """Each job's schedule: its default unless VICINO_JOB_SCHEDULES names it. An override of a
    job that does not exist is refused (a typo would silently leave the default running)."""
    names = {j.name for j in jobs}
    overrides = settings.schedule_overrides()
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ScheduleError(f"VICINO_JOB_SCHEDULES names unknown job(s) {', '.join(unknown)}; "
                            f"the jobs are: {', '.join(sorted(names))}")
    return {j.name: overrides.get(j.name) or Schedule.parse(j.schedule) for j in jobs}


@dataclass
class SchedulerContainer:
    settings: SchedulerSettings
    redis: object
    runner: JobRunner
    schedules: dict[str, Schedule]
    signer: TokenSigner
    access: Authenticator


def job_metrics(registry: CollectorRegistry):
    """`observe(run)` for the runner: runs by job and outcome, and their durations."""
    runs = Counter("vicino_job_runs_total", "job runs ended on this replica", ["job", "outcome"], registry=registry)
    seconds = Histogram("vicino_job_duration_seconds", "duration of ended job runs", ["job"], registry=registry,
                        buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600))

    def observe(run: JobRun) -> None:
        runs.labels(run.job, run.outcome).inc()
        if run.duration_s is not None:
            seconds.labels(run.job).observe(run.duration_s)

    return observe


def build(settings: SchedulerSettings, redis, jobs: list[JobDefinition], host: str | None = None,
          registry: CollectorRegistry | None = None) -> SchedulerContainer:
    schedules = resolve_schedules(jobs, settings)
    runner = JobRunner(jobs, RunStore(redis), redis, schedules, settings.tz, host=host,
                       observe=job_metrics(registry) if registry is not None else None)
    signer = TokenSigner(settings.token_secret)
    return SchedulerContainer(settings, redis, runner, schedules, signer,
                              Authenticator(redis, settings.admin_token, signer, settings.token_secret,
                                            RateLimiter(redis, settings.rate_limit_policies())))
