"""The one place the scheduler's parts are put together: the jobs it is handed (the composition
root collects them from every service), their schedules, the run store and the runner."""
from __future__ import annotations

from dataclasses import dataclass

from services.kernel.auth import TokenSigner
from services.kernel.jobs import JobDefinition

from .adapters.run_store import RunStore
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


def build(settings: SchedulerSettings, redis, jobs: list[JobDefinition], host: str | None = None
          ) -> SchedulerContainer:
    schedules = resolve_schedules(jobs, settings)
    runner = JobRunner(jobs, RunStore(redis), redis, schedules, settings.tz, host=host)
    return SchedulerContainer(settings, redis, runner, schedules, TokenSigner(settings.token_secret))
