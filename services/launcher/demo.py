"""Demo data through the public API: real stores (MIMIT fuel stations of Milano and Roma, and
the Comune di Milano's NIL districts) and one demo phone with consent."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import httpx

from .store_files import read_features

DEMO_DEVICE = {"device_id": "demo-phone-1", "customer_id": "demo-customer-1", "platform": "android",
               "push_token": "demo-fcm-token", "timezone": "Europe/Rome"}


def demo_files() -> list[Path]:
    base = resources.files("services.launcher") / "demo_data"
    return [Path(str(base / "fuel_stations_mi_rm.csv")), Path(str(base / "milano_nil.geojson"))]


def post_features(client: httpx.Client, features: list[dict], batch: int = 5000) -> dict:
    totals = {"created": 0, "updated": 0, "rejected": []}
    for start in range(0, len(features), batch):
        r = client.post("/v1/stores", json={"type": "FeatureCollection", "features": features[start:start + batch]})
        r.raise_for_status()
        body = r.json()
        totals["created"] += body["created"]
        totals["updated"] += body["updated"]
        totals["rejected"] += [{**x, "index": x["index"] + start} for x in body["rejected"]]
    return totals


def load_demo(base_url: str, admin_token: str, radius_m: float) -> dict:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=120) as client:
        features: list[dict] = []
        for path in demo_files():
            features += read_features(path, default_radius_m=radius_m)
        totals = post_features(client, features)
        r = client.post("/v1/devices", json=DEMO_DEVICE)
        r.raise_for_status()
        device = r.json()
        client.put(f"/v1/customers/{DEMO_DEVICE['customer_id']}/consent",
                   json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
    return {"stores": totals, "device": device}
