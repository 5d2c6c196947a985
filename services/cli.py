"""The `vicino` command: run the stack, serve one service, manage stores."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Vicino: location-triggered personalised offers for omnichannel retail.",
                  no_args_is_help=True, add_completion=False)
serve_app = typer.Typer(help="Serve one service in the foreground (as a container runs it).", no_args_is_help=True)
stores_app = typer.Typer(help="Manage stores (geofences).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(stores_app, name="stores")


def _settings_or_exit(cls):
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as e:
        problems = "; ".join(f"VICINO_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}" for err in e.errors())
        typer.echo(f"vicino: refusing to start, configuration incomplete or unsafe: {problems}", err=True)
        raise typer.Exit(2)


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


@app.command()
def up() -> None:
    """Start the whole stack on one machine (what `make run` runs): embedded Redis unless
    VICINO_REDIS_URL is set, every service, demo data unless VICINO_DEMO=0."""
    from vicino.services.launcher.settings import LauncherSettings
    from vicino.services.launcher.up import run_up

    raise typer.Exit(run_up(_settings_or_exit(LauncherSettings)))


@serve_app.command("geo")
def serve_geo(host: str = typer.Option("127.0.0.1", envvar="VICINO_HOST", help="bind address"),
              port: int = typer.Option(8000, envvar="VICINO_PORT", help="port"),
              workers: int = typer.Option(1, min=1, help="worker processes")) -> None:
    """The geo service: stores, devices, consent, locations. Needs VICINO_REDIS_URL,
    VICINO_ADMIN_TOKEN and VICINO_TOKEN_SECRET."""
    import uvicorn

    from vicino.services.geo.settings import GeoSettings
    from vicino.services.runtime.observability import configure_logging

    settings = _settings_or_exit(GeoSettings)
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

    settings = _settings_or_exit(RecommenderSettings)
    configure_logging(settings.log_level)
    uvicorn.run("vicino.services.recommender.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=10)


@serve_app.command("recommender-worker")
def serve_recommender_worker() -> None:
    """The recommender's background consumers: store visits from the geo events, and the
    exporter of interactions to the Parquet log (VICINO_HISTORY_DIR)."""
    import asyncio

    from vicino.services.runtime.observability import configure_logging
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.recommender.worker import run_worker

    settings = _settings_or_exit(RecommenderSettings)
    configure_logging(settings.log_level)
    asyncio.run(run_worker(settings))


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

    settings = _settings_or_exit(PushSettings)
    configure_logging(settings.log_level)
    try:
        routes = check_providers(settings)
    except ProviderConfigError as e:
        typer.echo(f"vicino: refusing to start the push gateway: {e}", err=True)
        raise typer.Exit(2)
    typer.echo("push gateway providers: " + "; ".join(routes), err=True)
    uvicorn.run(create_app(settings, run_worker=worker), host=host, port=port, log_config=None, access_log=False,
                lifespan="on", timeout_graceful_shutdown=10)


@stores_app.command("import")
def stores_import(file: Path = typer.Argument(..., exists=True, dir_okay=False, help=".geojson/.json or .csv (optionally .gz)"),
                  url: str = typer.Option("http://127.0.0.1:8000", envvar="VICINO_URL", help="base URL of the stack"),
                  token: Optional[str] = typer.Option(None, envvar="VICINO_ADMIN_TOKEN", help="admin token (default: the one `vicino up` keeps in VICINO_DATA_DIR)"),
                  radius_m: float = typer.Option(80.0, help="fence radius for CSV rows without radius_m"),
                  batch: int = typer.Option(5000, min=1, max=100_000, help="features per request")) -> None:
    """Upsert stores from a GeoJSON FeatureCollection or a CSV with lat/lon columns."""
    from vicino.services.launcher.demo import post_features
    from vicino.services.launcher.store_files import StoreFileError, read_features

    token = admin_token_or_exit(token)
    try:
        features = read_features(file, default_radius_m=radius_m)
    except StoreFileError as e:
        typer.echo(f"vicino: {e}", err=True)
        raise typer.Exit(2)
    totals = call_api_or_exit(url, token, lambda client: post_features(client, features, batch))
    typer.echo(f"{len(features)} features: {totals['created']} created, {totals['updated']} updated, "
               f"{len(totals['rejected'])} rejected")
    for r in totals["rejected"][:50]:
        typer.echo(f"  rejected #{r['index']} {r.get('id')}: {r['reason']}")
    if len(totals["rejected"]) > 50:
        typer.echo(f"  ... and {len(totals['rejected']) - 50} more")


def _register_subcommands() -> None:
    # at the end: these modules import `_settings_or_exit` from this one
    from vicino.services.cli_history import history_app
    from vicino.services.cli_jobs import jobs_app, serve_scheduler
    from vicino.services.cli_offers import offers_app
    from vicino.services.cli_train import train_command

    app.add_typer(offers_app, name="offers", help="Manage the offer catalogue.")
    app.add_typer(history_app, name="history", help="Customers' interaction history: import, export, erasure.")
    app.command("train")(train_command)
    app.add_typer(jobs_app, name="jobs", help="The periodic jobs: list them, run one now.")
    serve_app.command("scheduler")(serve_scheduler)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
