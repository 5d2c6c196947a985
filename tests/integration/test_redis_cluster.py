"""The geo service against a real 3-master Redis Cluster: every key and script must live in
one slot per operation (hash tags), or Redis refuses with CROSSSLOT."""
import time

import pytest
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from vicino.services.geo.app import create_app
from vicino.services.kernel.contracts.geofence_events import GeofenceEventV1, device_shard, events_stream_key
from vicino.services.launcher.embedded_redis import EmbeddedRedisCluster
from tests.conftest import circle_store, fix, make_settings, register


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def test_geo_service_runs_on_redis_cluster(cluster, admin):
    settings = make_settings(cluster.url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as a, \
            TestClient(create_app(settings), raise_server_exceptions=False) as b:
        assert a.get("/readyz").status_code == 200
        stores = {"type": "FeatureCollection",
                  "features": [circle_store(f"c{i}", 45.0 + i * 0.01, 9.0, 60) for i in range(200)]}
        r = a.post("/v1/stores", headers=admin, json=stores)
        assert r.status_code == 200 and r.json()["created"] == 200, r.text
        assert a.put("/v1/stores/poly", headers=admin, json={
            "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[9.1, 45.1], [9.11, 45.1], [9.11, 45.11], [9.1, 45.11], [9.1, 45.1]]]},
            "properties": {}}).status_code == 201
        # replica b learns of both through the change log on the {stores} slot
        deadline = time.time() + 10
        while time.time() < deadline:
            near = b.get("/v1/stores?lat=45.105&lon=9.105&radius_m=10", headers=admin).json()
            if near and b.get("/v1/stores?lat=45.5&lon=9.0&radius_m=10", headers=admin).json():
                break
            time.sleep(0.1)
        else:
            pytest.fail("replica b never saw the stores written through replica a")

        devices = []
        for i in range(12):  # several devices, so several event shards and slots are exercised
            devices.append((f"phone-{i}", register(a, f"phone-{i}", f"cust-{i}")))
        t0 = time.time() - 100
        for n, (device_id, headers) in enumerate(devices):
            client = a if n % 2 else b
            r = client.post("/v1/locations", headers=headers, json={"device_id": device_id, "fixes": [
                fix(45.0 + n * 0.01, 9.0, t0), fix(45.0 + n * 0.01, 9.0, t0 + 1), fix(45.3, 9.5, t0 + 2)]})
            assert r.status_code == 200, r.text
            assert [e["type"] for e in r.json()["events"]] == ["enter", "exit"]
        # withdrawing consent touches the customer's slot and the device's slot
        assert a.put("/v1/customers/cust-0/consent", headers=admin,
                     json={"location": False, "marketing": False, "personalisation": False}).status_code == 200

    rc = RedisCluster.from_url(cluster.url)
    try:
        seen = 0
        for device_id, _ in devices:
            entries = rc.xrange(events_stream_key(device_shard(device_id, settings.event_shards)))
            events = [GeofenceEventV1.from_stream_fields(f) for _, f in entries]
            mine = [e.type for e in events if e.device_id == device_id]
            assert mine == ["enter", "exit"], (device_id, mine)
            seen += len(mine)
        assert seen == 24
        assert len({device_shard(d, settings.event_shards) for d, _ in devices}) > 3
    finally:
        rc.close()
