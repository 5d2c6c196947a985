"""A refusal before the body (401, 403, 413) reaches the caller through the production proxy
as itself, not as nginx's 502: the service reads and drops a refused body of up to
`DRAIN_MAX_BYTES` before it closes the connection (runtime/edge_guard.py). The compose proxy's
nginx.conf, as shipped but for its addresses, in front of the real geo service served by
`vicino serve geo`; everything on 127.0.0.1."""
from __future__ import annotations

import httpx
import pytest

from testbed.processes import served_service
from tests.conftest import ADMIN_TOKEN, register
from tests.support import assert_problem
from tests.unit.front_door_support import NGINX_CONF, SERVICES
from tests.unit.test_front_door_nginx import free_port, render_compose_conf, start_nginx, stop_nginx
from vicino.services.runtime.edge_guard import DRAIN_MAX_BYTES


@pytest.fixture
def proxied_geo(redis_url, tmp_path):
    with served_service("geo", redis_url, tmp_path) as geo_url:
        ports = {name: free_port() for name in SERVICES}  # the other services: nothing listens there
        ports["geo"] = int(geo_url.rsplit(":", 1)[1])
        listen = free_port()
        work = tmp_path / "nginx"
        work.mkdir()
        door = start_nginx("compose", render_compose_conf(NGINX_CONF.read_text(), ports, listen, work), work, listen)
        try:
            yield door.url, geo_url
        finally:
            stop_nginx(door)


def test_refusals_of_large_bodies_arrive_as_themselves_through_nginx(proxied_geo):
    front, geo_url = proxied_geo
    big = b'{"type":"FeatureCollection","features":[' + b" " * (3 * 1024 * 1024) + b"]}"
    assert len(big) <= DRAIN_MAX_BYTES
    with httpx.Client(base_url=front, timeout=60) as http:
        # no credential, 3 MiB to the bulk route (the proxy lets 256 MiB through there): 401
        for _ in range(3):
            assert_problem(http.post("/v1/stores", content=big, headers={"Content-Type": "application/json"}), 401)
        # a key without the operator role meets the default limit: 413, not 502
        with httpx.Client(base_url=geo_url, timeout=30) as geo:
            made = geo.post("/v1/keys", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            json={"name": "analyst", "roles": ["analyst"]})
            assert made.status_code == 201, made.text
            analyst = {"Authorization": f"Bearer {made.json()['key']}", "Content-Type": "application/json"}
        assert_problem(http.post("/v1/stores", content=big, headers=analyst), 413, "exceeds")
        # and the connection to the service is still good for the next caller
        assert http.get("/v1/stores/nothing", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 404
