"""The front door (issue #16, "One front door"): every public operation of every service reached
through one app, routed by the table the Ingress carries; one OpenAPI of the whole surface;
health, readiness and metrics spanning the services; a clear 404 for a path nobody serves."""
from __future__ import annotations

import re

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from vicino.services.front_door.app import FrontDoor
from vicino.services.front_door.openapi import merge_documents
from vicino.services.front_door.prometheus_text import merge_expositions
from vicino.services.front_door.wiring import build_front_door
from vicino.services.geo.settings import GeoSettings
from vicino.services.kernel.contracts.public_routes import SERVICES, owner_of
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.scheduler.settings import SchedulerSettings
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, circle_store, fix, make_rec_settings, register
from tests.support import assert_problem

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def front(redis_server, geo_url, tmp_path_factory):
    # one front door for the module (four services start in a few seconds): Redis emptied once
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    common = dict(redis_url=redis_server.url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET)
    recommender = make_rec_settings(redis_server.url, geo_url=geo_url,
                                    history_dir=str(tmp_path_factory.mktemp("history")))
    door = build_front_door(geo=GeoSettings(**common), recommender=recommender, push=PushSettings(**common),
                            scheduler=SchedulerSettings(**common))
    with TestClient(door, raise_server_exceptions=False) as client:
        yield door, client


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_every_public_operation_of_every_service_reaches_its_owner_through_one_port(front):
    door, client = front
    seen = set()
    for service, app in door.apps.items():
        for path, item in app.openapi()["paths"].items():
            if not path.startswith("/v1/"):
                continue
            # the routing table agrees with who really serves it
            assert owner_of(_concrete(path)) == service, f"{path} is {service}'s, the table says {owner_of(path)}"
            for method in item:
                # unauthenticated: the owner's own edge answers (401 problem), not the front's 404
                r = client.request(method.upper(), _concrete(path))
                assert r.status_code == 401, f"{method.upper()} {path}: {r.status_code} {r.text[:200]}"
                assert r.headers["content-type"].startswith("application/problem+json")
                seen.add((service, method, path))
    assert {s for s, _, _ in seen} == set(SERVICES)
    assert len(seen) >= 45


def test_requests_through_the_front_door_do_what_they_do_at_the_service(front):
    _, client = front
    assert client.put("/v1/stores/s1", headers=ADMIN, json=circle_store("s1", 45.0, 9.0)).status_code == 201
    dev = register(client, "d1", "c1")
    assert client.put("/v1/customers/c1/consent", headers=ADMIN,
                      json={"location": True, "marketing": True, "personalisation": True}).status_code == 200
    r = client.post("/v1/locations", headers=dev, json={"device_id": "d1", "fixes": [fix(45.0, 9.0)]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    # a sub-resource kept by another service: the recommender's stock of geo's store
    r = client.put("/v1/stores/s1/inventory", headers=ADMIN, json={"items": []})
    assert r.status_code in (200, 422), r.text
    assert client.get("/v1/stores/s1/inventory", headers=ADMIN).status_code == 200
    assert client.get("/v1/customers/c1/consent", headers=dev).json()["location"] is True
    assert client.get("/v1/jobs", headers=ADMIN).status_code == 200
    assert client.get("/v1/deliveries", headers=ADMIN, params={"customer_id": "c1"}).status_code == 200
    assert client.get("/v1/model", headers=ADMIN).status_code == 200


def test_one_openapi_document_of_the_whole_public_surface(front):
    door, client = front
    doc = client.get("/openapi.json").json()
    for service, app in door.apps.items():
        for path, item in app.openapi()["paths"].items():
            if path.startswith("/v1/"):
                for method, op in item.items():
                    merged = doc["paths"][path][method]
                    assert merged["x-vicino-service"] == service
                    assert all(t.startswith(f"{service}: ") for t in merged["tags"]), merged["tags"]
    assert not [p for p in doc["paths"] if not p.startswith("/v1/")]
    # every reference resolves inside the document
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', client.get("/openapi.json").text))
    assert refs and refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
    assert "swagger-ui" in client.get("/docs").text


def test_health_readiness_and_metrics_span_the_services(front):
    _, client = front
    assert client.get("/healthz").json()["services"] == sorted(SERVICES)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["services"]) == set(SERVICES)
    client.get("/v1/stores", headers=ADMIN)
    client.get("/v1/jobs", headers=ADMIN)
    text = client.get("/metrics").text
    assert text.count("# TYPE vicino_http_requests_total ") == 1
    assert 'service="geo"' in text and 'service="scheduler"' in text


def test_a_path_no_service_owns_is_a_problem_404(front):
    _, client = front
    for path in ("/v1/nothing-here", "/v2/stores", "/", "/admin"):
        assert_problem(client.get(path), 404)
    assert_problem(client.post("/v1/nothing", json={}), 404, "no service")


def test_a_front_door_without_a_service_says_so():
    door = FrontDoor({})
    with TestClient(door) as client:
        assert_problem(client.get("/v1/stores"), 404, "geo")


def test_schemas_two_services_define_differently_are_kept_apart():
    a = {"openapi": "3.1.0", "paths": {"/v1/a": {"get": {"responses": {"200": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Out"}}}}}}}}, "components": {"schemas": {"Out": {"type": "string"}}}}
    b = {"openapi": "3.1.0", "paths": {"/v1/b": {"get": {"responses": {"200": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Out"}}}}}}}}, "components": {"schemas": {"Out": {"type": "integer"}}}}
    doc = merge_documents({"geo": a, "push": b})
    assert doc["components"]["schemas"]["Out"] == {"type": "string"}
    assert doc["components"]["schemas"]["PushOut"] == {"type": "integer"}
    ref = doc["paths"]["/v1/b"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PushOut"
    with pytest.raises(ValueError, match="both"):
        merge_documents({"geo": a, "push": a})


def test_metrics_of_several_services_merge_into_one_valid_exposition():
    one = '# HELP m_total requests\n# TYPE m_total counter\nm_total{service="geo"} 1.0\nshared 2.0\n'
    two = '# HELP m_total requests\n# TYPE m_total counter\nm_total{service="push"} 3.0\n'
    merged = merge_expositions([one, two])
    assert merged.count("# TYPE m_total counter") == 1
    assert 'm_total{service="geo"} 1.0' in merged and 'm_total{service="push"} 3.0' in merged
