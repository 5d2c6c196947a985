"""Scoped API keys and the audit trail (issue #15, "Who may do what"): keys made, listed and
revoked through the geo service and honoured by every service sharing the Redis; each route
accepts the roles it declares in its OpenAPI; a key without them gets a 403 naming the role, an
unknown or revoked key a 401; services call each other with keys of their own; every write by
a key lands in the audit trail, with a person's id only as a keyed hash."""
from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.problems import REFUSAL_CODES

from vicino.services.kernel.roles import ROLES, service_key
from vicino.services.push_gateway.app import create_app as create_push
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.recommender.app import create_app as create_recommender
from vicino.services.scheduler.app import create_app as create_scheduler
from vicino.services.scheduler.settings import SchedulerSettings
from vicino.services.geo.app import create_app as create_geo
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, circle_store, fix, register
from tests.support import assert_problem, redis_dump

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def make_key(client: TestClient, *roles: str, name: str = "k") -> tuple[str, str]:
    r = client.post("/v1/keys", headers=ADMIN, json={"name": name, "roles": list(roles)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith(f"vk_{body['key_id']}_") and body["roles"] == sorted(roles)
    return body["key_id"], body["key"]


def test_keys_are_made_once_listed_without_secret_and_revoked_at_once_on_every_replica(settings, redis_sync):
    with TestClient(create_geo(settings), raise_server_exceptions=False) as a, \
            TestClient(create_geo(settings), raise_server_exceptions=False) as b:
        key_id, key = make_key(a, "operator", name="store ops")
        listed = a.get("/v1/keys", headers=ADMIN).json()
        mine = next(k for k in listed if k["key_id"] == key_id)
        assert mine == {"key_id": key_id, "name": "store ops", "roles": ["operator"],
                        "created_at": mine["created_at"], "revoked_at": None}
        dump = repr(redis_dump(redis_sync, access=True))
        assert key.split("_", 2)[2] not in dump, "the secret is stored"  # only its keyed hash is
        # replica b honours a key made through replica a
        store = circle_store("s1", 45.0, 9.0)
        assert b.put("/v1/stores/s1", headers=bearer(key), json=store).status_code == 201
        assert a.delete(f"/v1/keys/{key_id}", headers=ADMIN).json()["revoked_at"] is not None
        # ... and refuses it the moment it is revoked: no cache to wait out
        assert_problem(b.put("/v1/stores/s1", headers=bearer(key), json=store), 401, "unknown or revoked",
                       code="token_invalid")
        # a wrong secret for a real key id, and a made-up key, get the same answer
        assert_problem(b.get("/v1/stores/s1", headers=bearer(f"vk_{key_id}_{'x' * 43}")), 401, "unknown or revoked")
        assert_problem(b.get("/v1/stores/s1", headers=bearer("vk_nosuchkey_" + "y" * 43)), 401, "unknown or revoked")
        assert_problem(b.get("/v1/stores/s1", headers=bearer("garbage")), 401, code="token_invalid")
        assert_problem(b.get("/v1/stores/s1"), 401, "missing", code="credentials_missing")
        assert_problem(a.delete("/v1/keys/nosuchkey", headers=ADMIN), 404, "nosuchkey")


def test_bad_key_requests_get_a_clear_4xx(client):
    assert_problem(client.post("/v1/keys", headers=ADMIN, json={"name": "x", "roles": ["root"]}), 422, "root")
    assert_problem(client.post("/v1/keys", headers=ADMIN, json={"name": "x", "roles": []}), 422, "roles")
    assert_problem(client.post("/v1/keys", headers=ADMIN, json={"name": "", "roles": ["analyst"]}), 422, "name")
    assert_problem(client.post("/v1/keys", headers=ADMIN, json={"name": "x\n", "roles": ["analyst"]}), 422, "name")
    assert_problem(client.delete("/v1/keys/Bad Id!", headers=ADMIN), 422)
    # only an admin manages keys, and a key cannot mint a stronger one
    _, operator = make_key(client, "operator")
    assert_problem(client.post("/v1/keys", headers=bearer(operator), json={"name": "x", "roles": ["admin"]}),
                   403, "role admin")
    assert_problem(client.get("/v1/keys", headers=bearer(operator)), 403, "role admin")


def test_each_role_opens_its_routes_and_no_other(client):
    _, operator = make_key(client, "operator")
    _, analyst = make_key(client, "analyst")
    _, app_backend = make_key(client, "app_backend")
    _, support = make_key(client, "support")
    store = circle_store("s1", 45.0, 9.0)
    # stores: written by the operator; read by the operator and the analyst
    assert_problem(client.put("/v1/stores/s1", headers=bearer(analyst), json=store), 403, "role admin or operator",
                   "holds analyst", code="forbidden_role")
    assert client.put("/v1/stores/s1", headers=bearer(operator), json=store).status_code == 201
    assert client.get("/v1/stores/s1", headers=bearer(analyst)).status_code == 200
    assert_problem(client.get("/v1/stores/s1", headers=bearer(support)), 403, "analyst")
    # devices: registered by the retailer's app server, not by the operator
    device = {"device_id": "d1", "customer_id": "c1", "platform": "android", "push_token": "t",
              "timezone": "Europe/Rome"}
    assert_problem(client.post("/v1/devices", headers=bearer(operator), json=device), 403, "app_backend")
    r = client.post("/v1/devices", headers=bearer(app_backend), json=device)
    assert r.status_code == 201, r.text
    # consent: the app server sets it; support reads it; the operator neither
    consent = {"location": True, "marketing": True, "personalisation": True}
    assert client.put("/v1/customers/c1/consent", headers=bearer(app_backend), json=consent).status_code == 200
    assert client.get("/v1/customers/c1/consent", headers=bearer(support)).status_code == 200
    assert_problem(client.put("/v1/customers/c1/consent", headers=bearer(support), json=consent), 403, "app_backend")
    assert_problem(client.get("/v1/customers/c1/consent", headers=bearer(operator)), 403, "support")
    # consent in batches (a CRM import): the app server only
    batch = {"items": [{"customer_id": "c1", "consent": {"marketing": True}}]}
    assert client.post("/v1/consents:batch", headers=bearer(app_backend), json=batch).json()["ok"] == 1
    for other in (support, operator, analyst):
        assert_problem(client.post("/v1/consents:batch", headers=bearer(other), json=batch), 403, "app_backend")
    # location data: erased by support only
    assert_problem(client.delete("/v1/customers/c1/location-data", headers=bearer(app_backend)), 403, "support")
    assert client.delete("/v1/customers/c1/location-data", headers=bearer(support)).status_code == 200
    # a key may hold several roles
    _, both = make_key(client, "analyst", "support")
    assert client.get("/v1/stores/s1", headers=bearer(both)).status_code == 200
    assert client.get("/v1/customers/c1/consent", headers=bearer(both)).status_code == 200
    # a key is not a device: it cannot report fixes
    assert_problem(client.post("/v1/locations", headers=bearer(app_backend),
                               json={"device_id": "d1", "fixes": []}), 403, "device token", code="device_token_required")


def test_device_tokens_keep_their_own_rules(client):
    dev = register(client, "d1", "c1")
    assert client.get("/v1/customers/c1/consent", headers=dev).status_code == 200
    assert_problem(client.get("/v1/customers/c2/consent", headers=dev), 403, "own customer", code="not_own_customer")
    assert_problem(client.put("/v1/stores/s1", headers=dev, json=circle_store("s1", 45.0, 9.0)), 403,
                   "role admin or operator", "device token may not", code="forbidden_role")


def test_every_refusal_code_is_answered_where_documented(settings, redis_url):
    """Each documented refusal code, produced by the refusal it names (the words of `detail` are
    for people; clients switch on `code`), and each 401 and 403 carries one (`assert_problem`)."""
    clock = FixedClock(time.time())
    seen = set()

    def refused(r, status: int, code: str) -> None:
        assert_problem(r, status, code=code)
        seen.add(code)

    with TestClient(create_geo(settings, clock=clock), raise_server_exceptions=False) as geo:
        key_id, analyst = make_key(geo, "analyst")
        store = circle_store("s1", 45.0, 9.0)
        refused(geo.get("/v1/stores/s1"), 401, "credentials_missing")
        for wrong in ("garbage", "v1.e30.bad-signature", "v2.a.b", "v1.only-two", f"vk_{key_id}_{'x' * 43}"):
            refused(geo.get("/v1/stores/s1", headers=bearer(wrong)), 401, "token_invalid")
        refused(geo.get("/v1/stores/s1", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}), 401, "token_invalid")
        refused(geo.put("/v1/stores/s1", headers=bearer(analyst), json=store), 403, "forbidden_role")
        dev = register(geo, "d1", "c1", consent=False)
        refused(geo.put("/v1/stores/s1", headers=dev, json=store), 403, "forbidden_role")
        refused(geo.post("/v1/locations", headers=bearer(analyst), json={"device_id": "d1", "fixes": []}), 403,
                "device_token_required")
        refused(geo.post("/v1/devices/d1/token", headers=ADMIN), 403, "device_token_required")
        refused(geo.get("/v1/devices/d2", headers=dev), 403, "not_own_device")
        refused(geo.post("/v1/locations", headers=dev, json={"device_id": "d2", "fixes": [fix(45.0, 9.0)]}), 403,
                "not_own_device")
        refused(geo.get("/v1/customers/c2/consent", headers=dev), 403, "not_own_customer")
        refused(geo.get("/v1/devices/d1/regions", headers=dev, params={"lat": 45.0, "lon": 9.0}), 409,
                "consent_required")
        newer = bearer(geo.post("/v1/devices/d1/token", headers=dev).json()["token"])
        refused(geo.post("/v1/devices/d1/token", headers=dev), 401, "token_already_refreshed")
        register(geo, "d1", "c1")  # registered again: both tokens are revoked at once
        for old in (dev, newer):
            refused(geo.get("/v1/devices/d1", headers=old), 401, "token_revoked")
            refused(geo.post("/v1/locations", headers=old, json={"device_id": "d1", "fixes": [fix(45.0, 9.0)]}), 401,
                    "token_revoked")
        current = register(geo, "d1", "c1")
        clock.advance(31 * 86_400)  # past the 30 days of a device token
        refused(geo.get("/v1/devices/d1", headers=current), 401, "token_expired")
    assert seen == set(REFUSAL_CODES), "a documented code no refusal answers"


def test_every_v1_operation_of_every_service_declares_who_may_call_it(settings, rec_settings, redis_url):
    apps = {"geo": create_geo(settings), "recommender": create_recommender(rec_settings),
            "push": create_push(PushSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET)),
            "scheduler": create_scheduler(SchedulerSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN,
                                                            token_secret=TOKEN_SECRET), [], run_schedule=False)}
    for service, app in apps.items():
        paths = app.openapi()["paths"]
        ops = [(p, m, op) for p, item in paths.items() if p.startswith("/v1/") for m, op in item.items()]
        assert ops, service
        for path, method, op in ops:
            where = f"{service} {method.upper()} {path}"
            roles = op.get("x-vicino-roles")
            assert roles is not None, f"{where} declares no roles"
            assert set(roles) <= set(ROLES), where
            assert roles == [] or "admin" in roles, where
            assert "**Access**" in op.get("description", ""), where
            if roles == []:
                assert op["x-vicino-device-token"] != "no", where  # then it is a device's route


def test_writes_by_keys_are_in_the_audit_trail_with_customers_as_keyed_hashes(client):
    key_id, app_backend = make_key(client, "app_backend", name="app server")
    consent = {"location": True, "marketing": False, "personalisation": False}
    assert client.put("/v1/customers/alice-42/consent", headers=bearer(app_backend), json=consent).status_code == 200
    assert client.put("/v1/customers/alice-42/consent", headers=bearer(app_backend), json={}).status_code == 422
    trail = client.get("/v1/audit", headers=ADMIN, params={"key_id": key_id}).json()
    assert [(e["method"], e["route"], e["status"]) for e in trail] == [
        ("PUT", "/v1/customers/{customer_id}/consent", 200), ("PUT", "/v1/customers/{customer_id}/consent", 422)]
    assert all(e["target"].startswith("customer_id=~") and "alice" not in e["target"] for e in trail)
    assert "alice-42" not in client.get("/v1/audit", headers=ADMIN).text
    # an admin can still find a customer's entries, through the same keyed hash
    assert len(client.get("/v1/audit", headers=ADMIN, params={"customer_id": "alice-42"}).json()) == 2
    assert client.get("/v1/audit", headers=ADMIN, params={"customer_id": "bob"}).json() == []
    # the key's own creation was a write by the admin token
    made = client.get("/v1/audit", headers=ADMIN, params={"key_id": "admin-token"}).json()
    assert ("POST", "/v1/keys", 201) in [(e["method"], e["route"], e["status"]) for e in made]
    # reads are not audited; bad queries are refused
    assert_problem(client.get("/v1/audit", headers=ADMIN, params={"from": "yesterday"}), 422, "from")
    assert_problem(client.get("/v1/audit", headers=ADMIN, params={"from": "2030-01-01T00:00:00Z",
                                                                  "to": "2029-01-01T00:00:00Z"}), 422, "before")
    assert_problem(client.get("/v1/audit", headers=bearer(app_backend)), 403, "role admin")


def test_services_call_each_other_with_their_own_scoped_keys(redis_url, geo_url, redis_sync, tmp_path):
    """The recommender's erasure reaches geo with the recommender's key (support, app_backend),
    not the admin token; a revoked service key is refused like any other."""
    from tests.conftest import make_rec_settings

    with httpx.Client(base_url=geo_url, headers=ADMIN, timeout=30) as geo:
        r = geo.post("/v1/devices", json={"device_id": "sd1", "customer_id": "sc1", "platform": "android",
                                          "push_token": "t", "timezone": "Europe/Rome"})
        assert r.status_code == 201, r.text
        rec_settings = make_rec_settings(redis_url, geo_url=geo_url, history_dir=str(tmp_path / "h"))
        with TestClient(create_recommender(rec_settings), raise_server_exceptions=False) as rec:
            keys = {k["key_id"]: k for k in geo.get("/v1/keys").json()}
            assert keys["svc-recommender"]["roles"] == ["app_backend", "support"]
            assert rec.delete("/v1/customers/sc1", headers=ADMIN).status_code == 200
            trail = geo.get("/v1/audit", params={"key_id": "svc-recommender"}).json()
            assert ("DELETE", "/v1/customers/{customer_id}/location-data", 200) in [
                (e["method"], e["route"], e["status"]) for e in trail]
            # the key is derived from the shared secret: the same on every replica, never sent by an admin
            _, key = service_key(TOKEN_SECRET, "recommender")
            assert geo.get("/v1/customers/sc1/consent", headers=bearer(key)).status_code == 200
            assert_problem(geo.put("/v1/stores/x", headers=bearer(key), json=circle_store("x", 1, 1)), 403, "operator")
            geo.delete("/v1/keys/svc-recommender")
            assert_problem(geo.get("/v1/customers/sc1/consent", headers=bearer(key)), 401, "revoked")


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_role_can_be_granted(client, role):
    _, key = make_key(client, role)
    assert client.get("/v1/keys", headers=bearer(key)).status_code == (200 if role == "admin" else 403)



def test_the_keys_commands_against_a_running_geo_service(geo_url, monkeypatch):
    from typer.testing import CliRunner

    from vicino.services.cli import app as cli

    monkeypatch.setenv("VICINO_URL", geo_url)
    monkeypatch.setenv("VICINO_ADMIN_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "kpi board", "--role", "analyst", "--role", "support"])
    assert made.exit_code == 0, made.output
    lines = dict(line.split(None, 1) for line in made.stdout.splitlines() if line.strip())
    key_id, key = lines["key_id"], lines["key"]
    assert lines["roles"] == "analyst, support"
    with httpx.Client(base_url=geo_url, timeout=10) as geo:
        assert geo.get("/v1/keys", headers=bearer(key)).status_code == 403  # works, and is not an admin
        listed = runner.invoke(cli, ["keys", "list"])
        assert listed.exit_code == 0 and key_id in listed.stdout and "kpi board" in listed.stdout
        assert key.split("_", 2)[2] not in listed.stdout
        revoked = runner.invoke(cli, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0 and f"revoked {key_id}" in revoked.stdout
        assert geo.get("/v1/keys", headers=bearer(key)).status_code == 401
    bad = runner.invoke(cli, ["keys", "create", "x", "--role", "root"])
    assert bad.exit_code == 2 and "unknown role" in bad.output
    gone = runner.invoke(cli, ["keys", "revoke", "nosuchkey"])
    assert gone.exit_code == 1 and "404" in gone.output
