"""Writes clients/typescript/openapi.json, the SDK's snapshot of the public surface's OpenAPI, and
regenerates src/generated/types.ts from it.

    .venv/bin/python clients/typescript/scripts/update_openapi.py            # from the four apps, in process
    .venv/bin/python clients/typescript/scripts/update_openapi.py --from http://127.0.0.1:8000   # a running front door

In process, the four services' documents are merged the way the front door serves them (their
paths side by side, the component schemas shared); no Redis is needed to build a document. The
SDK's stack test (tests/e2e/test_sdk.py) compares the snapshot with the live `/openapi.json`."""
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


def service_documents() -> dict[str, dict]:
    from vicino.services.geo.app import create_app as create_geo
    from vicino.services.geo.settings import GeoSettings
    from vicino.services.push_gateway.app import create_app as create_push
    from vicino.services.push_gateway.settings import PushSettings
    from vicino.services.recommender.app import create_app as create_recommender
    from vicino.services.recommender.settings import RecommenderSettings
    from vicino.services.scheduler.app import create_app as create_scheduler
    from vicino.services.scheduler.settings import SchedulerSettings

    return {"geo": create_geo(GeoSettings(**PLACEHOLDERS)).openapi(),
            "recommender": create_recommender(RecommenderSettings(**PLACEHOLDERS, geo_url="http://127.0.0.1:1")).openapi(),
            "push": create_push(PushSettings(**PLACEHOLDERS)).openapi(),
            "scheduler": create_scheduler(SchedulerSettings(**PLACEHOLDERS), [], run_schedule=False).openapi()}


def merged(docs: dict[str, dict]) -> dict:
    """One document: every service's operations (the first service keeps a shared path such as
    /healthz), component schemas shared by name; two different schemas under one name refuse."""
    out: dict = {"openapi": "3.1.0", "info": {"title": "Vicino", "version": "1"}, "paths": {},
                 "components": {"schemas": {}}}
    for service, doc in docs.items():
        for path, item in doc["paths"].items():
            for method, op in item.items():
                out["paths"].setdefault(path, {}).setdefault(method, op)
        for name, schema in doc.get("components", {}).get("schemas", {}).items():
            have = out["components"]["schemas"].setdefault(name, schema)
            if have != schema:
                raise SystemExit(f"schema {name!r} differs between services ({service} and another)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="base_url", help="a running front door's base URL")
    args = ap.parse_args()
    if args.base_url:
        doc = httpx.get(args.base_url.rstrip("/") + "/openapi.json", timeout=30).raise_for_status().json()
    else:
        doc = merged(service_documents())
    (HERE / "openapi.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {HERE / 'openapi.json'}: {sum(len(v) for v in doc['paths'].values())} operations")
    return subprocess.call(["node", str(HERE / "scripts" / "generate-types.mjs")])


if __name__ == "__main__":
    sys.exit(main())
