"""Retraining honours the deployment (real Redis, a real geo service for consent): an erased
customer's rows never reach training, whether it reads the Parquet log (the `retrain` job) or a
history file (`vicino train --redis-url`), and only customers with personalisation consent get
a learned row; the others are ranked from their features, as cold customers are."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from vicino.services.kernel.contracts.history_file import read_history
from vicino.services.kernel.contracts.interaction_log import INTERACTIONS
from vicino.services.kernel.contracts.model_artifact import publish, read_version
from vicino.services.kernel.jobs import JobContext
from vicino.services.kernel.contracts.erasures import register_key
from vicino.services.recommender.adapters.erasure_register import ErasureRegister
from vicino.services.recommender.adapters.parquet_log import ParquetLog
from vicino.services.recommender.app import create_app
from vicino.services.recommender.jobs import retrain
from vicino.services.runtime.redis_client import open_async
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET

ROOT = Path(__file__).resolve().parents[2]
SLICE = ROOT / "tests" / "fixtures" / "online_retail_slice.csv"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ERASED = "14729"                                  # 71 rows; 34 items nobody else bought
ONLY_ERASED_BOUGHT = ("21794", "20707", "22588")
CONSENTING = ("15311", "17968")
REFUSING = "15862"                                # a consent record that says no
NOW = time.time()


def consent(geo_http, customer: str, personalisation: bool) -> None:
    r = geo_http.put(f"/v1/customers/{customer}/consent",
                     json={"location": True, "marketing": True, "personalisation": personalisation})
    assert r.status_code == 200, r.text


def on_redis(url: str, work):
    async def go():
        client = open_async(url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_retrain_forgets_erased_customers_and_gives_rows_only_to_consenting_ones(rec_settings, geo_http, tmp_path):
    table, _ = read_history(SLICE, received_at=NOW - 3600)
    ParquetLog(rec_settings.history_dir).write_partitioned(INTERACTIONS, table, "import-slice")
    on_redis(rec_settings.redis_url, lambda r: ErasureRegister(r, rec_settings.erasure_register_key()).record([ERASED], NOW - 60))
    for c in CONSENTING:
        consent(geo_http, c, True)
    consent(geo_http, REFUSING, False)
    settings = rec_settings.model_copy(update={"model_dir": str(tmp_path / "models")})

    out = on_redis(settings.redis_url, lambda r: retrain(JobContext(r), settings))
    assert not out["published"]                   # the slice has no validation customers: written, not published
    assert out["erased_rows_dropped"] == 71 and out["users_without_learned_row"] == 91 - len(CONSENTING)
    art = read_version(settings.model_dir, out["version"])
    m = art.manifest
    assert sorted(m.user_ids) == sorted(CONSENTING)                      # a row only with consent
    assert m.data_window["users"] == 91 and m.data_window["rows"] == table.num_rows - 71
    assert NOW - 60 < m.erasures_as_of <= time.time()
    # the erased customer's purchases shaped nothing: the items only they bought are unknown
    for item in ONLY_ERASED_BOUGHT:
        assert item not in m.item_ids and item not in m.item_feature_map
    assert art.user_feature_emb.shape[0] == len(m.user_features) > 0

    # served: the customer who refused, once they consent, is ranked from features; the others by the model
    publish(settings.model_dir, out["version"])
    known = m.item_ids[:3]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for n, item in enumerate(known):
            r = client.put(f"/v1/offers/o{n}", headers=ADMIN, json={
                "title": f"o{n}", "item_ids": [item], "category": "MUG", "price": 3, "currency": "EUR",
                "valid_from": NOW - 3600, "valid_to": NOW + 86_400})
            assert r.status_code == 201, r.text
        consent(geo_http, REFUSING, True)
        for customer, reasons in ((REFUSING, {"cold_start_features"}), (CONSENTING[0], {"model"})):
            r = client.get(f"/v1/customers/{customer}/offers", headers=ADMIN, params={"k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == out["version"]
            assert {o["reason"] for o in r.json()["offers"]} == reasons, (customer, r.json())


def test_vicino_train_with_the_deployments_redis_forgets_erased_customers_of_a_history_file(redis_url, tmp_path):
    from vicino.services.cli import app as cli

    on_redis(redis_url, lambda r: ErasureRegister(r, register_key(TOKEN_SECRET)).record([ERASED], NOW))   # the file's rows all predate it
    r = CliRunner().invoke(cli, ["train", "--data", str(SLICE), "--epochs", "2", "--threads", "1", "--skip-test",
                                 "--model-dir", str(tmp_path / "m"), "--redis-url", redis_url],
                            env={"VICINO_TOKEN_SECRET": TOKEN_SECRET, "VICINO_ERASURE_KEY": None})
    assert r.exit_code == 0, r.output
    assert "left out 71 rows of erased customers" in r.output
    assert "91 customers without personalisation consent have no learned row" in r.output   # nobody consented here
    version = next(p.name for p in (tmp_path / "m").iterdir() if not p.name.startswith("."))
    m = read_version(tmp_path / "m", version).manifest
    assert m.user_ids == [] and m.data_window["users"] == 91
    assert not set(ONLY_ERASED_BOUGHT) & (set(m.item_ids) | set(m.item_feature_map))
    unreachable = CliRunner().invoke(cli, ["train", "--data", str(SLICE), "--model-dir", str(tmp_path / "m2"),
                                           "--redis-url", "redis://127.0.0.1:1"],
                                    env={"VICINO_TOKEN_SECRET": TOKEN_SECRET})
    assert unreachable.exit_code == 1 and "cannot reach Redis" in unreachable.output


def test_a_publication_prunes_to_keep_versions_and_an_unpublished_run_prunes_nothing(tmp_path):
    from vicino.models.pipeline import TrainSettings, train_and_publish
    from vicino.services.kernel.contracts.model_artifact import current_version, list_versions

    fast = TrainSettings(no_components=8, epochs=1, num_threads=1, evaluate_test=False, blend_weights=(0.0,),
                         blend_half_lives=(30.0,))
    root = tmp_path / "models"

    def run(**kw):
        time.sleep(1.0)  # version names sort by creation time to the second
        return train_and_publish(SLICE, root, settings=fast.replace(force_publish=True), **kw)

    first = [run(publish=True).version for _ in range(3)]
    publish(root, first[0])                           # an operator rolled back to the oldest
    quiet = run(publish=False, keep=2)
    assert quiet.pruned == [] and len(list_versions(root)) == 4
    report = run(publish=True, keep=2)                # the published one and the newest other stay
    assert report.published and report.pruned == first
    assert list_versions(root) == [quiet.version, report.version] and current_version(root) == report.version
