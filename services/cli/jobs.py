"""`vicino jobs`: list the periodic jobs, or run one now in the foreground (under the same Redis
lock as the scheduler, so it never runs beside a scheduled run of the same job). Registered in
services/cli/__init__.py; `vicino serve scheduler` is in services/cli/serve.py."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import typer

from vicino.services.cli.guards import jobs_or_exit

jobs_app = typer.Typer(help="The periodic jobs: list them, run one now.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


async def _open(settings):
    from vicino.services.runtime.redis_client import open_async, wait_for_redis

    try:
        await wait_for_redis(settings.redis_url, min(settings.redis_wait_s, 5.0), logging.getLogger("vicino.jobs"))
    except RuntimeError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(1)
    return open_async(settings.redis_url)


@jobs_app.command("list")
def list_jobs() -> None:
    """Every job with its schedule and its last run (from Redis)."""
    from vicino.services.scheduler.adapters.run_store import RunStore

    settings, jobs, schedules = jobs_or_exit()

    async def last():
        redis = await _open(settings)
        try:
            return await RunStore(redis).last_runs([j.name for j in jobs])
        finally:
            await redis.aclose()

    runs = asyncio.run(last())
    typer.echo(f"{'job':<16} {'schedule':<14} {'last run':<21} {'outcome':<8} {'took':>8}  description")
    for j in sorted(jobs, key=lambda j: j.name):
        run, _ = runs[j.name]
        took = f"{run.duration_s:.1f}s" if run and run.duration_s is not None else "-"
        typer.echo(f"{j.name:<16} {str(schedules[j.name]):<14} {_when(run.started_at if run else None):<21} "
                   f"{run.outcome if run else '-':<8} {took:>8}  {j.description}")
        if run and run.error:
            typer.echo(f"{'':<16} error: {run.error.splitlines()[0][:200]}")


@jobs_app.command("run")
def run_job(name: str = typer.Argument(..., help="the job (see `vicino jobs list`)")) -> None:
    """Run one job now, in the foreground, with a progress bar where it is long. Exits 1 if it
    fails or another run of it is in progress, 2 if there is no such job."""
    from vicino.services.runtime.observability import configure_logging
    from vicino.services.scheduler.adapters.run_store import RunStore
    from vicino.services.scheduler.use_cases.run_job import JobRunner

    settings, jobs, schedules = jobs_or_exit()
    by_name = {j.name: j for j in jobs}
    if name not in by_name:
        typer.echo(f"vicino: no job {name!r}; the jobs are: {', '.join(sorted(by_name))}", err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_level)

    async def main():
        redis = await _open(settings)
        try:
            runner = JobRunner(jobs, RunStore(redis), redis, schedules, settings.tz)
            if by_name[name].long:
                bar, progress = _progress_bar()
                with bar:
                    return await runner.run(name, "manual", progress)
            return await runner.run(name, "manual")
        finally:
            await redis.aclose()

    result = asyncio.run(main())
    if result.status == "locked":
        h = result.holder or {}
        typer.echo(f"vicino: {name} is running elsewhere (run {h.get('run_id')} on {h.get('host')}, since "
                   f"{_when(h.get('started_at'))}); not started", err=True)
        raise typer.Exit(1)
    run = result.run
    typer.echo(f"{name}: {run.outcome} in {run.duration_s:.1f} s")
    for k, v in run.summary.items():
        typer.echo(f"  {k}: {v}")
    if run.outcome != "ok":
        typer.echo(f"vicino: {run.error}", err=True)
        raise typer.Exit(1)


def _progress_bar():
    from vicino.services.cli.progress import TRAIN_STAGES, progress_bar

    return progress_bar(TRAIN_STAGES)  # the retrain job's stages are training's
