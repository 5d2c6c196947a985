"""The alert rules (infra/prometheus/alerts.yml) watch metrics that exist: every metric name in
their expressions is on the /metrics of a real service app (geo, recommender, push gateway, the
recommender-worker's health edge) wired to a real Redis. And the served model's age, the gauge the
staleness alert reads, is the model's: now minus the manifest's `created_at`."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from vicino.services.geo.app import create_app as create_geo
from vicino.services.kernel.contracts.interactions import interactions_stream_key
from vicino.services.kernel.contracts.model_artifact import Blend, Manifest, publish, write_version
from vicino.services.push_gateway.app import create_app as create_push
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.recommender.app import create_app as create_recommender
from vicino.services.recommender.wiring import build_visit_consumer
from vicino.services.recommender.worker_process import health_app
from vicino.services.runtime.redis_client import open_async
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, make_rec_settings, make_settings

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "infra" / "prometheus" / "alerts.yml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
MODEL_AGE_S = 2 * 86_400


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics body exports, including those of families that have no
    sample yet (a counter no one has incremented still has its HELP and TYPE lines)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in SUFFIXES.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


def rule_metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bvicino_[a-zA-Z0-9_]+", expr))


def model_dir(root: Path) -> Path:
    arrays = {"user_repr": np.ones((1, 2), np.float32), "user_bias": np.zeros(1, np.float32),
              "item_repr": np.ones((1, 2), np.float32), "item_bias": np.zeros(1, np.float32),
              "user_feature_emb": np.zeros((0, 2), np.float32), "user_feature_bias": np.zeros(0, np.float32),
              "item_feature_emb": np.zeros((0, 2), np.float32), "item_feature_bias": np.zeros(0, np.float32)}
    created = time.time() - MODEL_AGE_S
    write_version(root, Manifest(version="v1", created_at=created, data_window={"start": 0, "end": created, "rows": 1},
                                 settings={"k": 2}, metrics={}, user_ids=["u1"], item_ids=["i1"], user_features=[],
                                 item_features=[], popular_items=["i1"], blend=Blend()), arrays)
    publish(root, "v1")
    return root


def scrape_every_service(redis_url: str, tmp_path: Path) -> dict[str, str]:
    bodies = {}
    with TestClient(create_geo(make_settings(redis_url))) as c:
        bodies["geo"] = c.get("/metrics").text
    rec = make_rec_settings(redis_url, geo_url="http://127.0.0.1:9", history_dir=str(tmp_path / "history"),
                            model_dir=str(model_dir(tmp_path / "models")), event_shards=1, customer_shards=1)
    with TestClient(create_recommender(rec)) as c:
        assert c.get("/v1/model", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["serving"] == "v1"
        bodies["recommender"] = c.get("/metrics").text
    push = PushSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, customer_shards=1,
                        geo_url="http://127.0.0.1:9", recommender_url="http://127.0.0.1:9")
    with TestClient(create_push(push)) as c:
        bodies["push"] = c.get("/metrics").text
    redis = open_async(redis_url)
    worker = health_app(redis, [build_visit_consumer(rec, redis, "test-worker")],
                        [(interactions_stream_key(0), "exporter")])
    with TestClient(worker) as c:
        assert c.get("/healthz").status_code == 200
        bodies["recommender-worker"] = c.get("/metrics").text
    return bodies


def test_every_alert_watches_metrics_the_services_export(redis_url, tmp_path):
    bodies = scrape_every_service(redis_url, tmp_path)
    exported = set().union(*(exported_names(b) for b in bodies.values()))
    assert not rule_metric_names("vicino_stream_group_lags > 1") <= exported  # the check can fail: a misspelt name
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        names = rule_metric_names(rule["expr"])
        assert names, f"{rule['alert']} watches no vicino metric: {rule['expr']}"
        assert names <= exported, f"{rule['alert']} watches {sorted(names - exported)}, which no service exports"
    # each concern of the issue has its alert
    watched = set().union(*(rule_metric_names(r["expr"]) for r in rules))
    assert {"vicino_stream_group_lag", "vicino_stream_group_oldest_pending_age_seconds",
            "vicino_stream_trimmed_unconsumed_total", "vicino_consumer_dead_lettered_total",
            "vicino_http_requests_total", "vicino_push_deliveries_total", "vicino_model_age_seconds"} <= watched

    # the model's age is the served version's
    ages = [s.value for f in text_string_to_metric_families(bodies["recommender"]) for s in f.samples
            if s.name == "vicino_model_age_seconds"]
    assert len(ages) == 1 and MODEL_AGE_S <= ages[0] < MODEL_AGE_S + 300

