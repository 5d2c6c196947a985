"""Redis refusing the services' credentials (issue #15, "a connection whose AUTH failed is
dropped"): when the ACL user's password changes under a running service, its requests are 503
problem+json with Retry-After (never 500), no connection whose AUTH failed stays open, and
once the password is right again the service serves again without a restart. Before, the
pipelined hot-path client kept the connection its AUTH had failed on and sent every later
command there: NOAUTH for good, whatever the server's password became."""
from __future__ import annotations

import time

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from testbed.processes import wait_until
from tests.conftest import ADMIN_TOKEN, circle_store, make_settings, register
from tests.support import assert_problem
from vicino.services.geo.app import create_app as create_geo
from vicino.services.launcher.embedded_redis import EmbeddedRedis

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
USER, PASSWORD = "vicino-geo", "the right password"


@pytest.fixture
def acl_redis(tmp_path):
    with EmbeddedRedis(tmp_path / "redis", persist=False, user=(USER, PASSWORD)) as server:
        with redis_lib.Redis.from_url(server.url) as admin:  # stays authenticated through the changes
            yield server, admin


def _fix(geo: TestClient, device: dict):
    return geo.post("/v1/locations", headers=device, json={"device_id": "dev-1", "fixes": [
        {"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": time.time()}]})


def _others(admin: redis_lib.Redis) -> list[dict]:
    me = admin.client_id()
    return [c for c in admin.client_list() if int(c["id"]) != me]


def test_a_refused_password_is_a_503_and_the_service_recovers_when_it_is_right_again(acl_redis):
    server, admin = acl_redis
    with TestClient(create_geo(make_settings(server.url)), raise_server_exceptions=False) as geo:
        assert geo.put("/v1/stores/s1", headers=ADMIN, json=circle_store("s1", 45.0, 9.0)).status_code == 201
        device = register(geo, "dev-1", "cust-1")
        assert _fix(geo, device).status_code == 200

        # the password is rotated on the server and the service's connections are cut
        admin.execute_command("ACL", "SETUSER", USER, "resetpass", ">another password")
        admin.execute_command("CLIENT", "KILL", "USER", USER, "SKIPME", "yes")
        for _ in range(5):
            r = _fix(geo, device)  # the pipelined hot path
            assert_problem(r, 503, "redis")
            assert int(r.headers["retry-after"]) > 0
        assert_problem(geo.get("/v1/stores/s1", headers=ADMIN), 503, "redis")  # redis-py's pool
        # every connection whose AUTH failed was closed: none stays on, unauthenticated, as the
        # (disabled) default user
        wait_until(lambda: not [c for c in _others(admin) if c["user"] == "default"], 5, 0.05,
                   "connections whose AUTH failed to close")

        admin.execute_command("ACL", "SETUSER", USER, "resetpass", f">{PASSWORD}")
        r = _fix(geo, device)
        assert r.status_code == 200, r.text
        assert geo.get("/v1/stores/s1", headers=ADMIN).status_code == 200
        assert {c["user"] for c in _others(admin)} == {USER}
