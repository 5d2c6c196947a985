"""`vicino models ...`: the model versions kept on disk, through the recommender's `/v1/models`
(admin token), so that every replica and worker sees the change:

    vicino models list                 every kept version, newest first; * marks the published one
    vicino models rollback VERSION     publish a kept version (refused if it cannot be loaded)
    vicino models prune [--keep N]     delete all but the newest N (VICINO_MODEL_KEEP), never the published one
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

import typer

from vicino.services.cli.guards import ADMIN_TOKEN_OPTION, admin_token_or_exit, call_api_or_exit, json_or_raise

models_app = typer.Typer(help="Model versions: list, roll back, prune.", no_args_is_help=True)

URL = typer.Option("http://127.0.0.1:8000", envvar="VICINO_RECOMMENDER_URL", help="base URL of the stack (the front door) or of the recommender service")
TOKEN = ADMIN_TOKEN_OPTION


def _when(t: str | None) -> str:
    """An RFC 3339 time of the API, shortened to the minute (UTC)."""
    return dt.datetime.fromisoformat(t).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if t else "-"


@models_app.command("list")
def list_models(url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Every kept version: created, customers with a learned row, items, rows trained on, gate."""
    body = call_api_or_exit(url, admin_token_or_exit(token), lambda c: json_or_raise(c.get("/v1/models")))
    typer.echo(f"  {'version':<26} {'created (UTC)':<17} {'users':>8} {'items':>7} {'rows':>10} gate")
    for v in body["versions"]:
        gate = "-" if v.get("gate_passed") is None else ("passed" if v["gate_passed"] else "refused")
        typer.echo(f"{'*' if v['current'] else ' '} {v['version']:<26} {_when(v.get('created_at')):<17} "
                   f"{v.get('users') if v.get('users') is not None else '-':>8} "
                   f"{v.get('items') if v.get('items') is not None else '-':>7} "
                   f"{v.get('rows') if v.get('rows') is not None else '-':>10} {gate}"
                   + (f"  unreadable: {v['error']}" if v.get("error") else ""))
    typer.echo(f"(* published; this replica serves {body['serving'] or 'no model'}; keeping {body['keep']})", err=True)


@models_app.command("rollback")
def rollback(version: str = typer.Argument(..., help="a kept version (see `vicino models list`)"),
             url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Publish a kept version: every replica and worker switches to it within VICINO_MODEL_POLL_S."""
    body = call_api_or_exit(url, admin_token_or_exit(token), lambda c: json_or_raise(c.post(f"/v1/models/{version}/rollback")))
    typer.echo(f"published {body['current']} (was {body['previous'] or 'none'})")


@models_app.command("prune")
def prune(keep: Optional[int] = typer.Option(None, min=1, max=1000, help="versions to keep [default: "
                                             "VICINO_MODEL_KEEP of the service]"),
          url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Delete all but the newest versions; the published one always stays."""
    params = {"keep": keep} if keep is not None else {}
    body = call_api_or_exit(url, admin_token_or_exit(token), lambda c: json_or_raise(c.post("/v1/models/prune", params=params)))
    typer.echo(f"removed {len(body['removed'])}: {', '.join(body['removed']) or '-'}")
    typer.echo(f"kept {len(body['kept'])}: {', '.join(body['kept'])}")
