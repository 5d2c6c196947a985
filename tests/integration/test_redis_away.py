"""Redis goes away under a running service: every service answers 503 problem+json with
Retry-After at once (never a 500, never a hang), and serves again when Redis is back."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from vicino.services.launcher.embedded_redis import EmbeddedRedis
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
from tests.support import assert_problem

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _geo(url, tmp_path):
    from vicino.services.geo.app import create_app
    from vicino.services.geo.settings import GeoSettings

    return create_app(GeoSettings(redis_url=url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET)), \
        ("GET", "/v1/devices/some-phone")


def _recommender(url, tmp_path):
    from vicino.services.recommender.app import create_app
    from tests.conftest import make_rec_settings

    return create_app(make_rec_settings(url, history_dir=str(tmp_path / "h"), model_dir=str(tmp_path / "m"))), \
        ("GET", "/v1/customers/someone")


def _push(url, tmp_path):
    from vicino.services.push_gateway.app import create_app
    from vicino.services.push_gateway.settings import PushSettings

    return create_app(PushSettings(redis_url=url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET)), \
        ("GET", "/v1/deliveries?customer_id=someone")


@pytest.mark.parametrize("make", [_geo, _recommender, _push], ids=["geo", "recommender", "push"])
def test_redis_away_is_a_quick_503_and_the_service_recovers(make, tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        app, (method, path) = make(server.url, tmp_path)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.request(method, path, headers=ADMIN).status_code in (200, 404)
            server.proc.kill()
            server.proc.wait()
            t0 = time.monotonic()
            r = client.request(method, path, headers=ADMIN)
            assert time.monotonic() - t0 < 5
            assert_problem(r, 503, "Redis is unavailable")
            assert r.headers["retry-after"] == "1"
            assert client.get("/readyz").status_code == 503
            server = EmbeddedRedis(tmp_path / "redis", port=server.port, persist=False).start()
            deadline = time.monotonic() + 15
            while client.request(method, path, headers=ADMIN).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.request(method, path, headers=ADMIN).status_code in (200, 404)
    finally:
        server.stop()


def test_a_paused_redis_is_a_503_within_the_socket_timeout_not_a_hang(tmp_path):
    import signal

    from vicino.services.runtime.redis_client import SOCKET_TIMEOUT_S

    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    try:
        app, (method, path) = _push(server.url, tmp_path)
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.request(method, path, headers=ADMIN).status_code == 200
            server.proc.send_signal(signal.SIGSTOP)  # alive, silent
            try:
                t0 = time.monotonic()
                r = client.request(method, path, headers=ADMIN)
                waited = time.monotonic() - t0
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert_problem(r, 503, "Redis is unavailable")
            assert waited < SOCKET_TIMEOUT_S + 5
            deadline = time.monotonic() + 15
            while client.request(method, path, headers=ADMIN).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.request(method, path, headers=ADMIN).status_code == 200
    finally:
        server.stop()
