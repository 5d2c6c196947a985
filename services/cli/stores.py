"""`vicino stores`: the stores (geofences), through the geo service's HTTP API with the admin token."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vicino.services.cli.guards import admin_token_or_exit, call_api_or_exit

stores_app = typer.Typer(help="Manage stores (geofences).", no_args_is_help=True)


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
