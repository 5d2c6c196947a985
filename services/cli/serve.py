"""`vicino serve SERVICE`: one service in the foreground, as a container runs it."""
from __future__ import annotations

import typer

from vicino.services.cli.guards import jobs_or_exit, settings_or_exit

serve_app = typer.Typer(help="Serve one service in the foreground (as a container runs it).", no_args_is_help=True)


@serve_app.command("geo")
def serve_geo(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
              port: int = typer.Option(8000, envvar="VICINO_PORT", help="port"),
              workers: int = typer.Option(1, min=1, help="worker processes")) -> None:
    """The geo service: stores, devices, consent, locations. Needs VICINO_REDIS_URL,
    VICINO_ADMIN_TOKEN and VICINO_TOKEN_SECRET."""
    import uvicorn

    from vicino.services.geo.settings import GeoSettings
    from vicino.services.runtime.observability import configure_logging

    settings = settings_or_exit(GeoSettings)
    configure_logging(settings.log_level)
    uvicorn.run("vicino.services.geo.app:create_app", factory=True, host=host, port=port, workers=workers, log_config=None,
                access_log=False, lifespan="on", timeout_graceful_shutdown=10)


@serve_app.command("recommender")
def serve_recommender(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
                      port: int = typer.Option(8001, envvar="VICINO_RECOMMENDER_PORT", help="port"),
                      workers: int = typer.Option(1, min=1, help="worker processes")) -> None:
    """The recommender service: customers, identifiers, interactions, profile, erasure, offers,
    stock, campaign rules. Needs VICINO_REDIS_URL, VICINO_ADMIN_TOKEN, VICINO_TOKEN_SECRET, and
    VICINO_GEO_URL (where the geo service answers)."""
    import uvicorn

    from vicino.services.runtime.observability import configure_logging
    from vicino.services.recommender.settings import RecommenderSettings

    settings = settings_or_exit(RecommenderSettings)
    configure_logging(settings.log_level)
    uvicorn.run("vicino.services.recommender.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10)


@serve_app.command("recommender-worker")
def serve_recommender_worker(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
                             port: int = typer.Option(8004, envvar="VICINO_WORKER_PORT",
                                                      help="port of the health edge (/healthz, /readyz, /metrics)")) -> None:
    """The recommender's background consumers: store visits and decisions from the geo events,
    and the exporter of interactions to the Parquet log (VICINO_HISTORY_DIR)."""
    import asyncio

    from vicino.services.runtime.observability import configure_logging
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.recommender.worker_process import run_worker

    settings = settings_or_exit(RecommenderSettings)
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings, host=host, port=port))


@serve_app.command("push")
def serve_push(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
               port: int = typer.Option(8002, envvar="VICINO_PUSH_PORT", help="port of the receipts API"),
               worker: bool = typer.Option(True, "--worker/--no-worker",
                                           help="consume push jobs (--no-worker: the receipts API alone)")) -> None:
    """The push gateway: consumes the recommender's push jobs and delivers them through FCM,
    APNs, a signed webhook or the log; serves the delivery receipts. One process per replica
    (the consumer shares its event loop with the API). Refuses to start on an incomplete provider."""
    import uvicorn

    from vicino.services.runtime.observability import configure_logging
    from vicino.services.push_gateway.adapters.providers.base import ProviderConfigError
    from vicino.services.push_gateway.app import create_app
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.push_gateway.wiring import check_providers

    settings = settings_or_exit(PushSettings)
    configure_logging(settings.log_level)
    try:
        routes = check_providers(settings)
    except ProviderConfigError as e:
        typer.echo(f"vicino: refusing to start the push gateway: {e}", err=True)
        raise typer.Exit(2)
    typer.echo("push gateway providers: " + "; ".join(routes), err=True)
    uvicorn.run(create_app(settings, run_worker=worker), host=host, port=port, log_config=None, access_log=False,
                lifespan="on", timeout_graceful_shutdown=10)


@serve_app.command("scheduler")
def serve_scheduler(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
                    port: int = typer.Option(8003, envvar="VICINO_SCHEDULER_PORT", help="port of the jobs API")) -> None:
    """The scheduler: fires every service's periodic jobs (one run at a time across replicas, a
    scheduled occurrence run once) and serves GET /v1/jobs. Needs VICINO_REDIS_URL,
    VICINO_ADMIN_TOKEN, VICINO_TOKEN_SECRET."""
    import uvicorn

    from vicino.services.runtime.observability import configure_logging
    from vicino.services.scheduler.app import create_app

    settings, jobs, schedules = jobs_or_exit()
    configure_logging(settings.log_level)
    typer.echo("scheduler jobs: " + "; ".join(f"{n} {s}" for n, s in sorted(schedules.items())), err=True)
    uvicorn.run(create_app(settings, jobs), host=host, port=port, log_config=None, access_log=False,
                lifespan="on", timeout_graceful_shutdown=10)


@serve_app.command("front")
def serve_front(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
                port: int = typer.Option(8000, envvar="VICINO_PORT", help="port"),
                workers: int = typer.Option(1, min=1, help="worker processes")) -> None:
    """The front door: every public route (geo, recommender, push receipts, scheduler jobs) on one
    port, routed by path, with one OpenAPI at /openapi.json and /docs. No worker runs here. Needs
    what each of those services needs (VICINO_REDIS_URL, VICINO_ADMIN_TOKEN, VICINO_TOKEN_SECRET,
    VICINO_GEO_URL)."""
    import uvicorn

    from vicino.services.geo.settings import GeoSettings
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.runtime.observability import configure_logging
    from vicino.services.scheduler.settings import SchedulerSettings

    for kind in (GeoSettings, RecommenderSettings, PushSettings, SchedulerSettings):
        settings = settings_or_exit(kind)
    jobs_or_exit()  # a schedule that does not parse stops the front door too, with its message
    configure_logging(settings.log_level)
    uvicorn.run("vicino.services.front_door.wiring:build_front_door", factory=True, host=host, port=port,
                workers=workers, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10)
