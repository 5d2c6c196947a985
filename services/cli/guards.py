"""The guards and exits every `vicino` command shares: settings that refuse to load, the admin
token, the admin HTTP client, the job catalogue. Each prints one line on stderr and exits (2 for
a configuration the command refuses, 1 for a refusal or an unreachable service)."""
from __future__ import annotations

import typer


def settings_or_exit(cls):
    """`cls()`, or exit 2 naming every VICINO_* variable that is missing or unsafe."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as e:
        problems = "; ".join(f"VICINO_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}" for err in e.errors())
        typer.echo(f"vicino: refusing to start, configuration incomplete or unsafe: {problems}", err=True)
        raise typer.Exit(2)


# the `--token` option of the commands that call a running stack as admin
ADMIN_TOKEN_OPTION = typer.Option(None, envvar="VICINO_ADMIN_TOKEN",
                                  help="admin token (default: the one `vicino up` keeps in VICINO_DATA_DIR)")


def json_or_raise(r):
    """The answer's JSON; an error status raises (call_api_or_exit turns it into one line and exit 1)."""
    r.raise_for_status()
    return r.json()


def admin_token_or_exit(token: str | None) -> str:
    """The given token, else the one `vicino up` keeps in VICINO_DATA_DIR, else a clear exit."""
    if token is not None:
        return token
    import orjson

    from vicino.services.launcher.settings import LauncherSettings

    kept = LauncherSettings().data_dir / "secrets.json"
    if kept.exists():
        return orjson.loads(kept.read_bytes())["admin_token"]
    typer.echo("vicino: no admin token: set VICINO_ADMIN_TOKEN or pass --token", err=True)
    raise typer.Exit(2)


def call_api_or_exit(url: str, token: str, action):
    """`action(client)` with an admin client of `url`; an HTTP refusal or an unreachable service
    is one line on stderr and exit code 1."""
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as client:
        try:
            return action(client)
        except httpx.HTTPStatusError as e:
            typer.echo(f"vicino: {e.response.status_code} {e.response.text}", err=True)
            raise typer.Exit(1)
        except httpx.HTTPError as e:
            typer.echo(f"vicino: cannot reach {url}: {e}", err=True)
            raise typer.Exit(1)


def jobs_or_exit():
    """(scheduler settings, every job of the catalogue, their resolved schedules) for `vicino jobs`
    and `vicino serve scheduler`; exit 2 on incomplete settings or a schedule that does not parse."""
    from vicino.services.cli.job_catalog import all_jobs
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.scheduler.domain.schedules import ScheduleError
    from vicino.services.scheduler.settings import SchedulerSettings
    from vicino.services.scheduler.wiring import resolve_schedules

    scheduler, recommender = settings_or_exit(SchedulerSettings), settings_or_exit(RecommenderSettings)
    jobs = all_jobs(scheduler, recommender)
    try:
        schedules = resolve_schedules(jobs, scheduler)
    except ScheduleError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)
    return scheduler, jobs, schedules
