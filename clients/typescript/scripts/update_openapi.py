"""Writes clients/typescript/openapi.json, the SDK's snapshot of the public surface's OpenAPI, and
regenerates src/generated/types.ts from it.

    .venv/bin/python clients/typescript/scripts/update_openapi.py            # from the four apps, in process
    .venv/bin/python clients/typescript/scripts/update_openapi.py --from http://127.0.0.1:8000   # a running front door

In process, the front door is built as `vicino up` builds it and its document merged as it
serves it (no Redis is needed for that). The SDK's stack test (tests/e2e/test_sdk.py) compares
the snapshot with the live `/openapi.json`."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"redis_url": "redis://127.0.0.1:1/0", "admin_token": "snapshot-admin-token-0123456789",
                "token_secret": "snapshot-token-secret-0123456789abcdef"}


def front_door_document() -> dict:
    """What the front door serves at /openapi.json, built in process (no Redis needed)."""
    from vicino.services.front_door.openapi import merge_documents
    from vicino.services.front_door.wiring import build_front_door
    from vicino.services.geo.settings import GeoSettings
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.scheduler.settings import SchedulerSettings

    front = build_front_door(geo=GeoSettings(**PLACEHOLDERS), push=PushSettings(**PLACEHOLDERS),
                             recommender=RecommenderSettings(**PLACEHOLDERS, geo_url="http://127.0.0.1:1"),
                             scheduler=SchedulerSettings(**PLACEHOLDERS))
    return merge_documents({name: app.openapi() for name, app in front.apps.items()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="base_url", help="a running front door's base URL")
    args = ap.parse_args()
    if args.base_url:
        doc = httpx.get(args.base_url.rstrip("/") + "/openapi.json", timeout=30).raise_for_status().json()
    else:
        doc = front_door_document()
    (HERE / "openapi.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {HERE / 'openapi.json'}: {sum(len(v) for v in doc['paths'].values())} operations")
    return subprocess.call(["node", str(HERE / "scripts" / "generate-types.mjs")])


if __name__ == "__main__":
    sys.exit(main())
