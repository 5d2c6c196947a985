"""Schemathesis drives every documented operation with generated (valid and invalid) input
against a real `vicino serve geo`, `vicino serve recommender`, `vicino serve push` and `vicino serve scheduler` on a
real Redis: no answer may be a server error, and every answer must match the OpenAPI (documented status code,
media type and body schema, errors included: application/problem+json)."""
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, circle_store, register
from tests.support import served_geo, served_service

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# every answer must be no server error AND match what the OpenAPI documents (status, media type, body)
CONFORMANCE = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
CHECKS = {"geo": CONFORMANCE, "recommender": CONFORMANCE, "push": CONFORMANCE, "scheduler": CONFORMANCE}


def run_schemathesis(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs the schemathesis CLI; its whole output is kept in tmp_path/schemathesis.out (the
    assertion shows only its tail)."""
    out = subprocess.run([str(SCHEMATHESIS), *args], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    (tmp_path / "schemathesis.out").write_text(out.stdout + "\n" + out.stderr)
    return out


@pytest.fixture
def served(redis_url, tmp_path):
    with served_geo(redis_url, tmp_path) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert http.put("/v1/stores/duomo", headers=admin, json=circle_store("duomo", 45.4642, 9.19, 80)).status_code == 201
            device = register(http, "fuzz-phone", "fuzz-customer")
        yield url, device["Authorization"].split(" ", 1)[1]
    # a server error would have been logged: show it with the failure
    text = (tmp_path / "geo.log").read_text(errors="replace")
    assert '"level":"error"' not in text, text[-3000:]


@pytest.mark.parametrize("who", ["admin", "device"])
def test_no_generated_request_gets_a_server_error(served, who, tmp_path):
    url, device_token = served
    token = ADMIN_TOKEN if who == "admin" else device_token
    args = ["run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {token}",
            "--checks", CHECKS["geo"], "--max-examples", "15", "--seed", "20261126",
            "--report-dir", str(tmp_path / "report")]
    if who == "device":
        args += ["--include-path", "/v1/locations"]
    out = run_schemathesis(args, tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout


def test_no_generated_request_to_the_recommender_gets_a_server_error(redis_url, tmp_path):
    with served_geo(redis_url, tmp_path) as geo_url, \
            served_service("recommender", redis_url, tmp_path, env={"VICINO_GEO_URL": geo_url,
                                                            "VICINO_HISTORY_DIR": str(tmp_path / "history"),
                                                            "VICINO_MODEL_DIR": str(tmp_path / "models")}) as url:
        with httpx.Client(base_url=url, timeout=30) as http:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert http.post("/v1/interactions", headers=admin, json=[{
                "event_id": "seed-1", "customer_id": "fuzz-customer", "channel": "web", "type": "view",
                "item_id": "sku-1", "ts": 1_790_000_000}]).json()["accepted"] == 1
        out = run_schemathesis(["run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                              "--checks", CHECKS["recommender"], "--max-examples", "10", "--seed", "20261126",
                              "--report-dir", str(tmp_path / "report")], tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
    for log in ("geo.log", "recommender.log"):
        text = (tmp_path / log).read_text(errors="replace")
        assert '"level":"error"' not in text, text[-3000:]


def test_no_generated_request_to_the_push_gateway_gets_a_server_error(redis_url, tmp_path):
    with served_geo(redis_url, tmp_path) as geo_url, \
            served_service("push", redis_url, tmp_path, env={"VICINO_GEO_URL": geo_url}) as url:
        out = run_schemathesis(["run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                              "--checks", CHECKS["push"], "--max-examples", "15", "--seed", "20261126",
                              "--report-dir", str(tmp_path / "report")], tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
    text = (tmp_path / "push.log").read_text(errors="replace")
    assert '"level":"error"' not in text, text[-3000:]


def test_no_generated_request_to_the_scheduler_gets_a_server_error(redis_url, tmp_path):
    # every schedule off: the fuzzer's POST /v1/jobs/{name}/runs is the only way a job would run
    off = {job: "off" for job in ("reclaim_stuck", "trim_streams", "retrain", "export_history", "apply_erasures", "scrub_models",
                                  "kpi_rollup")}
    env = {"VICINO_JOB_SCHEDULES": json.dumps(off), "VICINO_HISTORY_DIR": str(tmp_path / "history"),
           "VICINO_MODEL_DIR": str(tmp_path / "models")}
    with served_service("scheduler", redis_url, tmp_path, env=env) as url:
        out = run_schemathesis(["run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                                "--checks", CHECKS["scheduler"], "--max-examples", "10", "--seed", "20261126",
                                "--report-dir", str(tmp_path / "report")], tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout
    # POST /v1/jobs/{name}/runs really starts jobs (the fuzzer learns their names from GET /v1/jobs); on an
    # empty stack some fail ("no history to train on"), which the scheduler logs as an error: that is the
    # job's outcome, not the HTTP edge's. Any other error line is.
    errors = [line for line in (tmp_path / "scheduler.log").read_text(errors="replace").splitlines()
              if '"level":"error"' in line and '"msg":"job failed"' not in line]
    assert not errors, "\n".join(errors)[-3000:]
