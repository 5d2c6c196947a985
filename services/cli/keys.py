"""`vicino keys ...`: API keys with roles, through the geo service's `/v1/keys` (admin token).

    vicino keys create NAME --role ROLE [--role ROLE]   prints the key once: keep it
    vicino keys list                                    every key, revoked ones included
    vicino keys revoke KEY_ID                           refused at once by every replica
"""
from __future__ import annotations

from typing import List, Optional

import typer

from vicino.services.cli.guards import ADMIN_TOKEN_OPTION, admin_token_or_exit, call_api_or_exit, json_or_raise
from vicino.services.kernel.roles import ROLES

keys_app = typer.Typer(help="API keys with roles: create, list, revoke.", no_args_is_help=True)

URL = typer.Option("http://127.0.0.1:8000", envvar="VICINO_URL", help="base URL of the stack (the geo service)")
TOKEN = ADMIN_TOKEN_OPTION


@keys_app.command("create")
def create(name: str = typer.Argument(..., help="who or what the key is for"),
           role: List[str] = typer.Option(..., "--role", help=f"one of {', '.join(ROLES)}; repeat for several"),
           url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Make a key; the key itself is printed this once (only a keyed hash is stored)."""
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        typer.echo(f"vicino: unknown role(s) {', '.join(unknown)}; the roles are {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    body = call_api_or_exit(url, admin_token_or_exit(token),
                            lambda c: json_or_raise(c.post("/v1/keys", json={"name": name, "roles": role})))
    typer.echo(f"key_id  {body['key_id']}\nroles   {', '.join(body['roles'])}\nkey     {body['key']}")
    typer.echo("(the key is shown this once: keep it in your secret store)", err=True)


@keys_app.command("list")
def list_keys(url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Every key: id, name, roles, when made and when revoked (never a secret)."""
    keys = call_api_or_exit(url, admin_token_or_exit(token), lambda c: json_or_raise(c.get("/v1/keys")))
    typer.echo(f"{'key_id':<20} {'roles':<28} {'revoked':<8} name")
    for k in keys:
        typer.echo(f"{k['key_id']:<20} {','.join(k['roles']):<28} {'yes' if k['revoked_at'] else 'no':<8} {k['name']}")


@keys_app.command("revoke")
def revoke(key_id: str = typer.Argument(...), url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Revoke a key: every replica refuses it from the next request on."""
    call_api_or_exit(url, admin_token_or_exit(token), lambda c: json_or_raise(c.delete(f"/v1/keys/{key_id}")))
    typer.echo(f"revoked {key_id}")
