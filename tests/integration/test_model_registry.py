"""Models forget, and the registry is usable: after `DELETE /v1/customers/{id}` no ranking reuses
the customer's learned row (even before any file changes), the `scrub_models` job removes their
id and row from every kept version and every replica reloads it; `GET /v1/models`, rollback and
prune through the API and `vicino models`, against real Redis, a real geo service and files."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from vicino.services.kernel.contracts.model_artifact import current_version, list_versions, read_version
from vicino.services.kernel.jobs import JobContext
from vicino.services.recommender.adapters.model_store import ModelHolder
from vicino.services.recommender.app import create_app
from vicino.services.recommender.jobs import scrub_models
from vicino.services.runtime.redis_client import open_async
from tests.conftest import ADMIN_TOKEN
from tests.integration.test_offers_api import NOW, make_version, offer, ranked
from tests.support import assert_problem, epoch, served_service, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONSENT = {"location": True, "marketing": True, "personalisation": True}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def run_scrub(settings) -> dict:
    async def go():
        client = open_async(settings.redis_url)
        try:
            return await scrub_models(JobContext(client), settings)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def served(rec_settings, tmp_path, geo_http):
    root = tmp_path / "models"
    make_version(root, "v1")
    make_version(root, "v2")            # v2 published; v1 kept for a rollback
    settings = rec_settings.model_copy(update={"model_dir": str(root), "model_poll_s": 0.1})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for oid, items in (("o1", ["i1"]), ("o2", ["i2"]), ("o3", ["i3"])):
            assert client.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(oid, items)).status_code == 201
        for cust in ("u1", "u2"):
            assert geo_http.put(f"/v1/customers/{cust}/consent", json=CONSENT).status_code == 200
        yield client, root, settings


def test_an_erased_customer_leaves_every_kept_version_and_no_ranking_uses_the_old_row(served, geo_http):
    client, root, settings = served
    other_replica = ModelHolder(str(root))
    asyncio.run(other_replica.refresh())
    r = client.post("/v1/interactions", headers=ADMIN, json=[{
        "event_id": "u1-view", "customer_id": "u1", "channel": "web", "type": "view", "item_id": "i1", "ts": NOW - 60}])
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert {o["reason"] for o in ranked(client, "u1", k=3)["offers"]} == {"model"}

    assert client.delete("/v1/customers/u1", headers=ADMIN).status_code == 200
    # the id comes back (a new account with the same id, consenting) before any scrub: it is a
    # stranger to the model, whatever row the files and the loaded model still hold
    assert geo_http.put("/v1/customers/u1/consent", json=CONSENT).status_code == 200
    assert "u1" in client.app.state.container.models.model.user_index
    back = ranked(client, "u1", k=3)["offers"]
    assert {o["reason"] for o in back} == {"cold_start_features"}, back
    assert {o["reason"] for o in ranked(client, "u2", k=3)["offers"]} == {"model"}   # others untouched

    report = run_scrub(settings)
    assert report["new_since_last_run"] and report["customers_removed"] == 2 and report["versions"] == 2
    for v in ("v1", "v2"):
        raw = (root / v / "manifest.json").read_text()
        assert '"u1"' not in raw and '"u2"' in raw
        art = read_version(root, v)
        assert art.manifest.user_ids == [None, "u2"] and not art.user_repr[0].any() and art.user_bias[0] == 0
    # every replica reloads the rewritten version: the id is gone from memory too
    wait_until(lambda: "u1" not in client.app.state.container.models.model.user_index, 10, what="API replica reload")
    assert asyncio.run(other_replica.refresh()) and "u1" not in other_replica.model.user_index
    assert client.app.state.container.models.status.serving == "v2" and client.get("/readyz").json()["checks"]["model"] == "ok"
    assert run_scrub(settings) == {"versions": 2, "new_since_last_run": False}
    # a version written after the last run is scrubbed too, although the register did not change
    make_version(root, "v3")
    again = run_scrub(settings)
    assert again["new_since_last_run"] and again["customers_removed"] == 1
    assert read_version(root, "v3").manifest.user_ids == [None, "u2"]


def test_the_registry_lists_rolls_back_and_prunes(served, geo_http):
    client, root, settings = served
    keys = {}
    for role in ("analyst", "operator", "app_backend"):
        r = geo_http.post("/v1/keys", json={"name": role, "roles": [role]})
        assert r.status_code == 201, r.text
        keys[role] = bearer(r.json()["key"])
    listing = client.get("/v1/models", headers=keys["analyst"])
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["current"] == body["serving"] == "v2" and body["keep"] == 5
    assert [(v["version"], v["current"], v["users"]) for v in body["versions"]] == [("v2", True, 2), ("v1", False, 2)]
    assert all(epoch(v["created_at"]) == pytest.approx(NOW, abs=1e-3) for v in body["versions"])
    assert {v["erasures_as_of"] for v in body["versions"]} == {None}  # the helper's manifests never read the register
    info = client.get("/v1/model", headers=ADMIN).json()
    assert abs(epoch(info["loaded_at"]) - time.time()) < 60
    assert epoch(info["created_at"]) == pytest.approx(NOW, abs=1e-3)
    assert (epoch(info["data_window"]["start"]), info["data_window"]["rows"]) == (0.0, 10)
    assert_problem(client.get("/v1/models", headers=keys["app_backend"]), 403)
    assert_problem(client.post("/v1/models/v1/rollback", headers=keys["analyst"]), 403)
    assert_problem(client.post("/v1/models/prune", headers=keys["analyst"]), 403)
    assert_problem(client.get("/v1/models"), 401)

    other_replica = ModelHolder(str(root))
    asyncio.run(other_replica.refresh())
    assert other_replica.status.serving == "v2"
    r = client.post("/v1/models/v1/rollback", headers=keys["operator"])
    assert r.status_code == 200 and r.json() == {"current": "v1", "previous": "v2"}
    assert current_version(root) == "v1" and client.get("/v1/model", headers=ADMIN).json()["serving"] == "v1"
    assert asyncio.run(other_replica.refresh()) and other_replica.status.serving == "v1"   # every replica follows

    assert_problem(client.post("/v1/models/v9/rollback", headers=ADMIN), 404, "v9")
    assert_problem(client.post("/v1/models/.hidden/rollback", headers=ADMIN), 422)
    make_version(root, "v3")                                        # published by the helper: go back to v1
    client.post("/v1/models/v1/rollback", headers=ADMIN)
    (root / "v3" / "arrays.npz").write_bytes((root / "v3" / "arrays.npz").read_bytes()[:100])
    assert_problem(client.post("/v1/models/v3/rollback", headers=ADMIN), 409, "cannot be loaded")
    assert current_version(root) == "v1"
    assert_problem(client.post("/v1/models/prune", headers=ADMIN, params={"keep": 0}), 422, "keep")

    pruned = client.post("/v1/models/prune", headers=keys["operator"], params={"keep": 2})
    assert pruned.status_code == 200 and pruned.json() == {"removed": ["v2"], "kept": ["v3", "v1"]}
    assert list_versions(root) == ["v1", "v3"] and current_version(root) == "v1"


def test_vicino_models_commands_against_a_running_recommender(redis_url, geo_url, tmp_path, monkeypatch):
    root = tmp_path / "models"
    for v in ("20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"):
        make_version(root, v)
    env = {"VICINO_GEO_URL": geo_url, "VICINO_MODEL_DIR": str(root), "VICINO_HISTORY_DIR": str(tmp_path / "history"),
           "VICINO_MODEL_POLL_S": "0.2", "VICINO_MODEL_KEEP": "2"}
    from vicino.services.cli import app as cli

    with served_service("recommender", redis_url, tmp_path, env=env) as url:
        monkeypatch.setenv("VICINO_RECOMMENDER_URL", url)
        monkeypatch.setenv("VICINO_ADMIN_TOKEN", ADMIN_TOKEN)
        runner = CliRunner()
        listed = runner.invoke(cli, ["models", "list"])
        assert listed.exit_code == 0, listed.output
        rows = [line for line in listed.stdout.splitlines()[1:] if line.strip()]
        assert len(rows) == 3
        assert rows[0].startswith("* 20260103T000000Z-cccccc") and rows[1].startswith("  20260102T000000Z-bbbbbb")
        assert rows[2].startswith("  20260101T000000Z-aaaaaa") and "refused" not in listed.stdout
        created = datetime.fromtimestamp(NOW, timezone.utc).strftime("%Y-%m-%d %H:%M")  # read from RFC 3339
        assert all(f" {created} " in row for row in rows), rows
        back = runner.invoke(cli, ["models", "rollback", "20260101T000000Z-aaaaaa"])
        assert back.exit_code == 0 and "published 20260101T000000Z-aaaaaa (was 20260103T000000Z-cccccc)" in back.stdout
        with httpx.Client(base_url=url, headers=ADMIN, timeout=10) as rec:
            wait_until(lambda: rec.get("/v1/model").json()["serving"] == "20260101T000000Z-aaaaaa", 10,
                       what="the served process on the rolled-back version")
        pruned = runner.invoke(cli, ["models", "prune"])             # VICINO_MODEL_KEEP=2 of the service
        assert pruned.exit_code == 0, pruned.output
        assert "removed 1: 20260102T000000Z-bbbbbb" in pruned.stdout   # the published one and the newest other
        assert list_versions(root) == ["20260101T000000Z-aaaaaa", "20260103T000000Z-cccccc"]
        missing = runner.invoke(cli, ["models", "rollback", "nope"])
        assert missing.exit_code == 1 and "404" in missing.output
