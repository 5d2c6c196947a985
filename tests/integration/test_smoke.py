"""The shortest path a phone takes: store, device, consent, fixes in and out of the fence."""
import time

from tests.conftest import circle_store, fix, register


def test_enter_dwell_exit_through_the_api(client, admin):
    assert client.put("/v1/stores/s1", headers=admin, json=circle_store("s1", 45.0, 9.0, 50, dwell_s=60)).status_code == 201
    dev = register(client)
    t0 = time.time() - 600
    r = client.post("/v1/locations", headers=dev, json={"device_id": "dev-1", "fixes": [
        fix(45.0, 9.0, t0), fix(45.0001, 9.0, t0 + 30), fix(45.0, 9.0001, t0 + 61), fix(45.01, 9.0, t0 + 120)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["type"] for e in body["events"]] == ["enter", "dwell", "exit"]
    assert len({e["visit_id"] for e in body["events"]}) == 1
    assert body["accepted"] == 4 and body["ignored"] == []
