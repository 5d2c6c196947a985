"""Offers through the recommender's public API: batched bulk upserts (`vicino offers import` and
the demo), and the demo catalogue built from real sales (`build_demo_offers.py` writes it), whose
validity windows are days relative to the moment it is loaded."""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import httpx
import orjson

DEMO_FILE = "offers_online_retail.json"
DAY_S = 86_400.0


def post_offers(client: httpx.Client, offers: list, batch: int = 1000) -> dict:
    """POST /v1/offers in batches; rejected items keep their index in `offers`. Raises
    httpx.HTTPStatusError when a whole batch is refused."""
    totals: dict = {"created": 0, "updated": 0, "rejected": [], "warnings": []}
    for start in range(0, len(offers), batch):
        r = client.post("/v1/offers", json={"offers": offers[start:start + batch]})
        r.raise_for_status()
        body = r.json()
        totals["created"] += body["created"]
        totals["updated"] += body["updated"]
        totals["rejected"] += [{**x, "index": x["index"] + start} for x in body["rejected"]]
        totals["warnings"] += [{**x, "index": x["index"] + start} for x in body["warnings"]]
    return totals


def demo_file() -> Path:
    return Path(str(resources.files("vicino.services.launcher") / "demo_data" / DEMO_FILE))


def demo_offers(now: float) -> list[dict]:
    """The demo catalogue with its relative validity turned into instants around `now`."""
    out = []
    for item in orjson.loads(demo_file().read_bytes())["offers"]:
        offer = {k: v for k, v in item.items() if k not in ("valid_from_days", "valid_to_days")}
        offer["valid_from"] = now + item["valid_from_days"] * DAY_S
        offer["valid_to"] = now + item["valid_to_days"] * DAY_S
        out.append(offer)
    return out


def load_demo_offers(client: httpx.Client, now: float | None = None) -> dict:
    """`client`: bound to the recommender with the admin token. Returns the bulk totals."""
    return post_offers(client, demo_offers(time.time() if now is None else now))
