"""`vicino campaigns ...`: campaigns as data, through the recommender's `/v1/campaigns` on the
stack's base URL, from a terminal beside `vicino up` (the stack file gives the URL and token).

    vicino campaigns list [--status S]          id, status, priority, spend against budget, name
    vicino campaigns show ID                    the campaign as stored (JSON), with its revision
    vicino campaigns apply FILE.json [--id ID]  create, or replace with the revision read just before
    vicino campaigns pause|resume|end ID        a status change (409 when not allowed)
    vicino campaigns preview ID CUSTOMER STORE [--locale L]   what would be sent now, and why
    vicino campaigns why VISIT_ID               every campaign's outcome at a visit, the message, the delivery
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vicino.services.cli.guards import ADMIN_TOKEN_OPTION, admin_token_or_exit, call_api_or_exit, json_or_raise

campaigns_app = typer.Typer(help="Campaigns: list, show, apply, pause, resume, end, preview, why.",
                            no_args_is_help=True)
URL = typer.Option("http://127.0.0.1:8000", envvar="VICINO_URL", help="base URL of the stack (the front door)")
TOKEN = ADMIN_TOKEN_OPTION


def _call(url: str, token: str | None, action):
    return call_api_or_exit(url, admin_token_or_exit(token), action)


@campaigns_app.command("list")
def list_campaigns(status: Optional[str] = typer.Option(None, help="draft, active, paused or ended"),
                   url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Every campaign with its spend against its budget."""
    params = {"status": status} if status else {}
    body = _call(url, token, lambda c: json_or_raise(c.get("/v1/campaigns", params=params)))
    if body["default_active"]:
        typer.echo("(no campaign stored: the default campaign built from the VICINO_* settings decides)")
    typer.echo(f"{'campaign_id':<24} {'status':<7} {'prio':>5} {'today':>7} {'total':>9}  name")
    for c in body["campaigns"]:
        s = c["spend"]
        total = f"{s['total']}/{s['total_budget']}" if s["total_budget"] is not None else str(s["total"])
        today = f"{s['today']}/{s['per_day_budget']}" if s["per_day_budget"] is not None else str(s["today"])
        typer.echo(f"{c['campaign_id']:<24} {c['status']:<7} {c['priority']:>5} {today:>7} {total:>9}  {c['name']}")


@campaigns_app.command("show")
def show(campaign_id: str, url: str = URL, token: Optional[str] = TOKEN) -> None:
    """The campaign as stored (JSON)."""
    typer.echo(json.dumps(_call(url, token, lambda c: json_or_raise(c.get(f"/v1/campaigns/{campaign_id}"))),
                          indent=2, ensure_ascii=False))


@campaigns_app.command("apply")
def apply(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="the campaign as JSON"),
          campaign_id: Optional[str] = typer.Option(None, "--id", help="default: the file's campaign_id, else its "
                                                    "name without extension"),
          url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Create the campaign, or replace it (with If-Match: the revision read just before, so an
    edit made meanwhile by someone else is refused with 412, not overwritten)."""
    try:
        body = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        typer.echo(f"vicino: {file} is not JSON: {e}", err=True)
        raise typer.Exit(2)
    if not isinstance(body, dict):
        typer.echo(f"vicino: {file} must hold one JSON object (a campaign)", err=True)
        raise typer.Exit(2)
    cid = campaign_id or body.pop("campaign_id", None) or file.stem
    for read_only in ("campaign_id", "revision", "created_at", "updated_at", "spend"):
        body.pop(read_only, None)

    def put(c):
        current = c.get(f"/v1/campaigns/{cid}")
        headers = {"If-Match": current.headers["ETag"]} if current.status_code == 200 else {}
        return json_or_raise(c.put(f"/v1/campaigns/{cid}", json=body, headers=headers))
    out = _call(url, token, put)
    typer.echo(f"{cid}: revision {out['revision']}, {out['status']}")


def _status(campaign_id: str, status: str, url: str, token: str | None) -> None:
    def change(c):
        current = c.get(f"/v1/campaigns/{campaign_id}")
        current.raise_for_status()
        spec = {k: v for k, v in current.json().items()
                if k not in ("campaign_id", "revision", "created_at", "updated_at", "spend")}
        return json_or_raise(c.put(f"/v1/campaigns/{campaign_id}", json={**spec, "status": status},
                                   headers={"If-Match": current.headers["ETag"]}))
    out = _call(url, token, change)
    typer.echo(f"{campaign_id}: {out['status']} (revision {out['revision']})")


@campaigns_app.command("pause")
def pause(campaign_id: str, url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Stop sending; the campaign still shows as `paused` in every decision's explanation."""
    _status(campaign_id, "paused", url, token)


@campaigns_app.command("resume")
def resume(campaign_id: str, url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Send again (a draft or a paused campaign becomes active)."""
    _status(campaign_id, "active", url, token)


@campaigns_app.command("end")
def end(campaign_id: str, url: str = URL, token: Optional[str] = TOKEN) -> None:
    """End the campaign for good (a draft is removed); it stays for its KPIs and explanations."""
    def delete(c):
        r = c.delete(f"/v1/campaigns/{campaign_id}")
        r.raise_for_status()
        return r
    out = _call(url, token, delete)
    typer.echo(f"{campaign_id}: {'removed (it was a draft)' if out.status_code == 204 else 'ended'}")


@campaigns_app.command("preview")
def preview(campaign_id: str, customer_id: str, store_id: str,
            locale: Optional[str] = typer.Option(None, help="BCP 47; default the customer's device's"),
            url: str = URL, token: Optional[str] = TOKEN) -> None:
    """What the campaign would send now to the customer at the store, and why or why not."""
    body = {"customer_id": customer_id, "store_id": store_id, **({"locale": locale} if locale else {})}
    p = _call(url, token, lambda c: json_or_raise(c.post(f"/v1/campaigns/{campaign_id}/preview", json=body)))
    verdict = "would send" if p["would_send"] else f"would not send: {p['global_reason'] or p['reason']}"
    typer.echo(f"{campaign_id} (revision {p['revision']}, {p['status']}) for {customer_id} at {store_id}: {verdict}")
    if p["offer"]:
        typer.echo(f"  offer    {p['offer']['offer_id']} (score {p['offer']['score']}, {p['offer']['rank_reason']})")
    if p["message"]:
        typer.echo(f"  [{p['message']['locale']}] {p['message']['title']}\n           {p['message']['body']}")


@campaigns_app.command("why")
def why(visit_id: str, url: str = URL, token: Optional[str] = TOKEN) -> None:
    """Why a visit did (or did not) get a push."""
    v = _call(url, token, lambda c: json_or_raise(c.get(f"/v1/visits/{visit_id}/decision")))
    store = v["store"]
    typer.echo(f"visit {visit_id} of {v['customer_id']} at {store['name'] or store['store_id']}")
    for d in v["decisions"]:
        typer.echo(f"  {d['event']['type']} at {d['event']['ts']}: {d['outcome']}"
                   + (f" ({d['reason']})" if d["reason"] else f" by {d['campaign_id']}"))
        for c in d["campaigns"]:
            typer.echo(f"    {c['campaign_id']:<24} {c['outcome']:<10} {c['reason'] or c['offer_id'] or ''}")
        if d["message"]:
            typer.echo(f"    [{d['message']['locale']}] {d['message']['title']} | {d['message']['body']}")
        if d["delivery"]:
            typer.echo(f"    delivery {d['delivery']['delivery_id']}: {d['delivery']['status']}")
