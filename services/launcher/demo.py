"""Demo data through the public API and CLI: real stores (MIMIT fuel stations of Milano and Roma,
the Comune di Milano's NIL districts), one demo phone with consent, and for the recommender a
real catalogue and history (UCI Online Retail), stock at the stores around Milano Duomo, and the
demo customer linked to a real shopper of that history."""
from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import httpx

from .demo_offers import load_demo_offers
from .store_files import read_features

DEMO_HISTORY = "online_retail_recent.csv.gz"
DEMO_SHOPPER = "14527"            # a UCI Online Retail customer with ~290 lines in the demo history
DUOMO = (45.4642, 9.19)
DEMO_DEVICE = {"device_id": "demo-phone-1", "customer_id": "demo-customer-1", "platform": "android",
               "push_token": "demo-fcm-token", "timezone": "Europe/Rome"}


def demo_files() -> list[Path]:
    base = resources.files("vicino.services.launcher") / "demo_data"
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


def load_demo_recommender(url: str, admin_token: str, env: dict, log_path: Path) -> dict:
    """Offers, history, stock near Duomo, and the demo customer merged with a real shopper."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as rec:
        offers = load_demo_offers(rec)
        history_file = Path(str(resources.files("vicino.services.launcher") / "demo_data" / DEMO_HISTORY))
        with open(log_path, "ab") as log:
            # the import and the first model (trained on the same file, not on what the import
            # writes) run side by side: the demo is ready sooner on two cores
            importing = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "history", "import",
                                          str(history_file)], env=env, stdout=log, stderr=log)
            training = subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "train", "--data",
                                         str(history_file), "--publish", "--skip-test"], env=env, stdout=log, stderr=log)
            try:
                if importing.wait(300) != 0:
                    raise subprocess.CalledProcessError(importing.returncode, "vicino history import")
                training.wait(600)  # the services pick the published model up on their own
            finally:
                for proc in (importing, training):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        stocked = _stock_near_duomo(rec, env["VICINO_GEO_URL"], headers)
        campaigns = load_demo_campaigns(rec)
        link = rec.post(f"/v1/customers/{DEMO_SHOPPER}/identifiers",
                        json={"kind": "device", "value": DEMO_DEVICE["device_id"], "verified": True})
        link.raise_for_status()
    return {"offers": offers, "stocked_stores": stocked, "campaigns": campaigns, "customer": link.json()["customer_id"],
            "model_published": training.returncode == 0}


# Two campaigns, so that `make run` shows campaigns as data: the Italian one sends on a dwell at
# any store (what the stack did before campaigns, now in the customer's words), the English one
# proposes only what the customer has not bought in 90 days, to a narrower audience, first.
DEMO_CAMPAIGNS = {
    "demo-dwell-it": {
        "name": "In negozio adesso", "status": "active", "priority": 10, "trigger": {"on": "dwell"},
        "limits": {"per_customer_per_day": 2, "per_customer_per_week": 5, "store_cooldown_s": 21_600,
                   "sends_per_day": 5000, "holdout_percent": 10, "ttl_s": 900},
        "message": {"templates": {
            "it": {"title": "{offer_title}: ora da {store_name}",
                   "body": "Solo {price} invece di {regular_price} (-{discount_percent}), fino al {valid_to}."},
            "en": {"title": "{offer_title}: now at {store_name}",
                   "body": "Only {price} instead of {regular_price} (-{discount_percent}), until {valid_to}."}},
            "default_locale": "it"}},
    "demo-discover-en": {
        "name": "Something new for regulars", "status": "active", "priority": 20, "trigger": {"on": "dwell"},
        "audience": {"min_purchases": 3},
        "offers": {"mode": "discover", "discover_days": 90},
        "limits": {"per_customer_per_week": 1, "sends_total": 20_000, "holdout_percent": 10, "ttl_s": 900},
        "message": {"templates": {"en": {"title": "New for you at {store_name}",
                                         "body": "{offer_title}, {price} until {valid_to}."}},
                    "default_locale": "en"}},
}


def load_demo_campaigns(rec: httpx.Client) -> list[str]:
    """The demo campaigns (created, or left as they are when a previous run made them)."""
    made = []
    for campaign_id, body in DEMO_CAMPAIGNS.items():
        r = rec.put(f"/v1/campaigns/{campaign_id}", json=body)
        if r.status_code != 428:  # 428: it exists (a restart on the same data): keep the marketer's edits
            r.raise_for_status()
        made.append(campaign_id)
    return made


def _stock_near_duomo(rec: httpx.Client, geo_url: str, headers: dict) -> int:
    """Every demo offer's items in stock at the stores within 3 km of Duomo, a few of them low,
    so that `min_stock` and the low-stock switch have something to act on."""
    offers = rec.get("/v1/offers", params={"limit": 1000}).json()["offers"]
    items = sorted({i for o in offers for i in o["item_ids"]})
    with httpx.Client(base_url=geo_url, headers=headers, timeout=60) as geo:
        near = geo.get("/v1/stores", params={"lat": DUOMO[0], "lon": DUOMO[1], "radius_m": 3000, "limit": 200})
        near.raise_for_status()
    stores = [s["store_id"] for s in near.json() if not s["store_id"].startswith("milano-nil-")]
    for n, store_id in enumerate(stores):
        stock = {item: (1 if (n + k) % 7 == 0 else 5 + (n + k) % 20) for k, item in enumerate(items)}
        rec.put(f"/v1/stores/{store_id}/inventory", json=stock).raise_for_status()
    return len(stores)
