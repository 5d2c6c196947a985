"""Times at the public edge (issue 16): every response writes a time as RFC 3339 in UTC with `Z`,
and every input that takes a time reads it either as RFC 3339 with an offset or as epoch seconds.

The OpenAPI of every service is walked so that a new route keeps the rule; real answers are read;
and each input that takes a time is sent both ways, with the same result (and a clear 422 for
anything else)."""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from jsonschema import Draft202012Validator

from vicino.services.geo.app import create_app as create_geo
from vicino.services.push_gateway.app import create_app as create_push
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.recommender.app import create_app as create_recommender
from vicino.services.scheduler.app import create_app as create_scheduler
from vicino.services.scheduler.settings import SchedulerSettings
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, circle_store, fix, register
from tests.support import assert_problem, epoch, epochs

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# a property named like a time: created_at, ts, at, first_ts, valid_from, paused_until, from, start, ...
TIME_NAME = re.compile(r"(^|_)(at|ts|until|time)$|^(from|to|start|end|valid_from|valid_to|next_before)$")
NUMERIC = {"number", "integer"}


def documented(client, method: str, template: str, r, status: int = 200):
    """The answer's JSON, after checking it against the schema its route documents (the SDK's types
    are generated from that schema: it must describe the times as they are written)."""
    assert r.status_code == status, r.text
    spec = client.app.openapi()
    schema = spec["paths"][template][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": spec.get("components", {})}).validate(r.json())
    return r.json()


def _apps(settings, rec_settings, redis_url) -> dict:
    kw = {"redis_url": redis_url, "admin_token": ADMIN_TOKEN, "token_secret": TOKEN_SECRET}
    return {"geo": create_geo(settings), "recommender": create_recommender(rec_settings),
            "push": create_push(PushSettings(**kw)),
            "scheduler": create_scheduler(SchedulerSettings(**kw), [], run_schedule=False)}


def _members(schema: dict, components: dict) -> list[dict]:
    """The alternatives a schema allows (anyOf/oneOf flattened, $ref resolved)."""
    if "$ref" in schema:
        return _members(components[schema["$ref"].rsplit("/", 1)[1]], components)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        return [m for a in alternatives for m in _members(a, components)]
    return [schema]


def _time_properties(schema, where: str, components: dict, seen: frozenset = frozenset()):
    """(owner, property name, its schema) of every time-named property reachable from `schema`;
    the owner is the component's name, or `where` for an inline object."""
    if not isinstance(schema, dict):
        return
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name not in seen:
            yield from _time_properties(components[name], name, components, seen | {name})
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, ()):
            yield from _time_properties(sub, where, components, seen)
    yield from _time_properties(schema.get("items"), where, components, seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _time_properties(schema["additionalProperties"], where, components, seen)
    for prop, sub in (schema.get("properties") or {}).items():
        if TIME_NAME.search(prop):
            yield where, prop, sub
        yield from _time_properties(sub, f"{where}.{prop}", components, seen)


def _schemas(spec: dict, part: str):
    """(where, schema) of every response body (`part` "responses") or request body ("requestBody")."""
    for path, item in spec["paths"].items():
        for method, op in item.items():
            bodies = ([r.get("content") or {} for r in op.get("responses", {}).values()] if part == "responses"
                      else [(op.get("requestBody") or {}).get("content") or {}])
            for content in bodies:
                for media in content.values():
                    if "schema" in media:
                        yield f"{method.upper()} {path}", media["schema"]


def test_no_response_of_any_service_writes_a_time_as_a_number(settings, rec_settings, redis_url):
    numeric, checked = set(), set()
    for service, app in _apps(settings, rec_settings, redis_url).items():
        spec = app.openapi()
        components = spec.get("components", {}).get("schemas", {})
        for where, schema in _schemas(spec, "responses"):
            for owner, prop, sub in _time_properties(schema, where, components):
                members = [m for m in _members(sub, components) if m.get("type") != "null"]
                checked.add((service, owner, prop))
                if any(m.get("type") in NUMERIC for m in members):
                    numeric.add((owner, prop))
                    continue
                for m in members:  # a string: RFC 3339 (date-time), or a whole day (the KPI roll-ups' from/to)
                    assert m.get("type") == "string" and m.get("format") in ("date-time", "date"), \
                        (service, owner, prop, sub)
    assert not numeric, (f"time fields written as numbers: {sorted(numeric)}; format them with kernel.times.rfc3339 "
                         "and type them InstantOut")
    # the walk reaches the times of every service (not a rule that holds because nothing was seen)
    for expected in [("geo", "VisitEventOut", "ts"), ("geo", "DeviceOut", "token_expires_at"), ("geo", "ConsentChangeOut", "at"), ("geo", "KeyOut", "created_at"),
                     ("recommender", "InteractionOut", "received_at"), ("recommender", "KpiPeriodOut", "from"),
                     ("recommender", "RankedOfferOut", "valid_to"), ("push", "DeliveryOut", "expires_at"),
                     ("push", "StatusChangeOut", "at"), ("scheduler", "JobRunOut", "started_at")]:
        assert expected in checked, expected
    assert any(s == "recommender" and p == "valid_from" for s, _, p in checked)  # the offers' inline schema


def test_every_request_body_time_takes_rfc3339_or_epoch_seconds(settings, rec_settings, redis_url):
    seen = set()
    for service, app in _apps(settings, rec_settings, redis_url).items():
        spec = app.openapi()
        components = spec.get("components", {}).get("schemas", {})
        for where, schema in _schemas(spec, "requestBody"):
            for owner, prop, sub in _time_properties(schema, where, components):
                if sub.get("readOnly"):
                    continue  # set by the service, dropped from a body that sends it back
                members = _members(sub, components)
                seen.add(prop)
                assert {"type": "string", "format": "date-time"}.items() <= next(
                    (m for m in members if m.get("type") == "string"), {}).items(), (service, owner, prop, sub)
                assert any(m.get("type") == "number" for m in members), (service, owner, prop, sub)
    assert {"ts", "valid_from", "valid_to"} <= seen


# --- real answers ------------------------------------------------------------------------------------

def test_keys_and_the_audit_trail_answer_rfc3339(client):
    before = time.time()
    created = documented(client, "post", "/v1/keys",
                         client.post("/v1/keys", headers=ADMIN, json={"name": "ops", "roles": ["operator"]}), 201)
    assert before - 1 <= epoch(created["created_at"]) <= time.time() and created["revoked_at"] is None
    revoked = documented(client, "delete", "/v1/keys/{key_id}",
                         client.delete(f"/v1/keys/{created['key_id']}", headers=ADMIN))
    assert epoch(revoked["created_at"]) <= epoch(revoked["revoked_at"]) <= time.time()
    trail = documented(client, "get", "/v1/audit", client.get("/v1/audit", headers=ADMIN))
    assert trail and all(before - 1 <= t <= time.time() for t in epochs(e["at"] for e in trail))


def test_a_customer_s_history_and_profile_answer_rfc3339_and_page_exactly(rec_client):
    t0 = 1_790_000_000.25
    items = [{"event_id": f"e{n}", "customer_id": "cust-t", "channel": "web", "type": "purchase", "item_id": "sku",
              "ts": t0 + n * 0.0015} for n in range(5)]  # 1.5 ms apart: the cursor must tell them apart
    items.append({"event_id": "e9", "customer_id": "cust-t", "channel": "store", "type": "view", "item_id": "sku",
                  "ts": "2026-10-01T12:00:00+02:00"})
    before = time.time()
    assert rec_client.post("/v1/interactions", headers=ADMIN, json=items).json()["accepted"] == 6
    profile = documented(rec_client, "get", "/v1/customers/{customer_id}",
                         rec_client.get("/v1/customers/cust-t", headers=ADMIN))
    assert profile["history"]["last_ts"] == "2026-10-01T10:00:00.000Z"  # the offset read, the answer in UTC
    assert epoch(profile["history"]["first_ts"]) == pytest.approx(t0, abs=1e-3)
    purchase = profile["last_purchases"][0]
    assert purchase["event_id"] == "e4" and epoch(purchase["ts"]) == pytest.approx(t0 + 4 * 0.0015, abs=1e-3)
    assert before - 1 <= epoch(purchase["received_at"]) <= time.time()

    seen, cursor = [], None
    for _ in range(10):  # bounded: six interactions, two a page
        params = {"limit": 2, **({"before": cursor} if cursor else {})}
        page = documented(rec_client, "get", "/v1/customers/{customer_id}/history",
                          rec_client.get("/v1/customers/cust-t/history", headers=ADMIN, params=params))
        assert all(epoch(i["ts"]) and epoch(i["received_at"]) for i in page["interactions"])
        seen += [i["event_id"] for i in page["interactions"]]
        cursor = page["next_before"]
        if cursor is None:
            break
        assert epoch(cursor) == epoch(page["interactions"][-1]["ts"])  # the last one's time, to the millisecond
    assert seen == ["e9", "e4", "e3", "e2", "e1", "e0"]  # each once, newest first


def test_offers_rules_and_a_store_s_offers_answer_rfc3339(rec_client, geo_http):
    assert geo_http.put("/v1/stores/s1", json=circle_store("s1", 45.0, 9.0)).status_code in (200, 201)
    body = {"title": "t", "item_ids": ["i1"], "category": "C", "price": 2, "currency": "EUR",
            "valid_from": "2030-06-01T00:00:00+02:00", "valid_to": 1_909_000_000}
    put = documented(rec_client, "put", "/v1/offers/{offer_id}",
                     rec_client.put("/v1/offers/o1", headers=ADMIN, json=body), 201)
    assert (put["valid_from"], put["valid_to"]) == ("2030-05-31T22:00:00.000Z", "2030-06-29T21:46:40.000Z")
    assert abs(epoch(put["updated_at"]) - time.time()) < 60
    listed = documented(rec_client, "get", "/v1/offers", rec_client.get("/v1/offers", headers=ADMIN))
    assert listed["offers"][0]["valid_from"] == put["valid_from"]
    rules = documented(rec_client, "put", "/v1/rules",
                       rec_client.put("/v1/rules", headers=ADMIN, json={"paused_brands": ["X"]}))
    assert abs(epoch(rules["updated_at"]) - time.time()) < 60
    here = documented(rec_client, "get", "/v1/stores/{store_id}/offers",
                      rec_client.get("/v1/stores/s1/offers", headers=ADMIN, params={"at": "2030-06-10T12:00:00Z"}))
    assert here["at"] == "2030-06-10T12:00:00.000Z" and [o["valid_to"] for o in here["eligible"]] == [put["valid_to"]]


# --- the same input, both ways -------------------------------------------------------------------------

def _rfc3339(t: float, hours: int = 0) -> str:
    """What a client would send: RFC 3339 with an offset (written here independently of the service)."""
    return datetime.fromtimestamp(t, timezone(timedelta(hours=hours))).isoformat()


def test_fixes_take_either_form_with_the_same_events(client, admin):
    duomo = circle_store("duomo", 45.4642, 9.19, 80)
    assert client.put("/v1/stores/duomo", headers=admin, json=duomo).status_code == 201
    t0 = float(int(time.time()) - 600)
    answers = []
    for n, as_text in enumerate((True, False)):
        dev = register(client, f"phone-{n}", f"cust-{n}")
        fixes = [fix(45.4642, 9.19, t0), fix(45.4642, 9.19, t0 + 70), fix(45.5, 9.3, t0 + 140)]
        if as_text:
            fixes = [{**f, "ts": _rfc3339(f["ts"], hours=2 * i)} for i, f in enumerate(fixes)]
        r = client.post("/v1/locations", headers=dev, json={"device_id": f"phone-{n}", "fixes": fixes})
        assert r.status_code == 200, r.text
        answers.append([(e["type"], e["ts"]) for e in r.json()["events"]])
    assert answers[0] == answers[1]
    assert answers[0][0] == ("enter", _z(t0)) and answers[0][-1] == ("exit", _z(t0 + 140))


def _z(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_interactions_and_offers_take_either_form(rec_client):
    t = 1_790_000_000.0
    for customer, ts in (("c-text", _rfc3339(t, -5)), ("c-epoch", t), ("c-epoch-text", str(int(t)))):
        item = {"event_id": "e1", "customer_id": customer, "channel": "app", "type": "view", "item_id": "i", "ts": ts}
        assert rec_client.post("/v1/interactions", headers=ADMIN, json=[item]).json()["accepted"] == 1
        history = rec_client.get(f"/v1/customers/{customer}/history", headers=ADMIN).json()["interactions"]
        assert [h["ts"] for h in history] == [_z(t)], customer
    offer = {"title": "t", "item_ids": ["i1"], "category": "C", "price": 2, "currency": "EUR"}
    a = rec_client.put("/v1/offers/a", headers=ADMIN, json={**offer, "valid_from": _rfc3339(t, 1),
                                                            "valid_to": _rfc3339(t + 86_400)}).json()
    b = rec_client.put("/v1/offers/b", headers=ADMIN, json={**offer, "valid_from": t, "valid_to": t + 86_400}).json()
    assert (a["valid_from"], a["valid_to"]) == (b["valid_from"], b["valid_to"]) == (_z(t), _z(t + 86_400))


@pytest.mark.parametrize("path, name", [("/v1/offers", "active_at"), ("/v1/kpis", "to"), ("/v1/kpis/daily", "to"),
                                        ("/v1/customers/c1/history", "before")])
def test_recommender_query_times_take_either_form_and_refuse_the_rest(rec_client, path, name):
    t = float(int(time.time()) - 3600)
    offer = {"title": "t", "item_ids": ["i1"], "category": "C", "price": 2, "currency": "EUR",
             "valid_from": t - 60, "valid_to": t + 60}
    assert rec_client.put("/v1/offers/o1", headers=ADMIN, json=offer).status_code == 201
    assert rec_client.post("/v1/interactions", headers=ADMIN, json=[
        {"event_id": f"e{n}", "customer_id": "c1", "channel": "app", "type": "view", "item_id": "i", "ts": t - 10 * n}
        for n in range(3)]).json()["accepted"] == 3
    answers = []
    for value in (_rfc3339(t, 9), t, str(int(t)), _rfc3339(t).replace("+00:00", "Z")):
        r = rec_client.get(path, headers=ADMIN, params={name: value})
        assert r.status_code == 200, (value, r.text)
        answers.append(r.json())
    assert all(a == answers[0] for a in answers), answers
    if name == "active_at":
        assert [o["offer_id"] for o in answers[0]["offers"]] == ["o1"]
    if name == "before":
        assert [i["event_id"] for i in answers[0]["interactions"]] == ["e1", "e2"]  # strictly before
    for bad in ("yesterday", "2026-11-26T10:00:00", "1e12"):
        body = assert_problem(rec_client.get(path, headers=ADMIN, params={name: bad}), 422, name)
        assert body["errors"][0]["field"] == f"query.{name}"


def test_a_store_s_offers_and_the_audit_trail_take_either_form(rec_client, geo_http, client):
    assert geo_http.put("/v1/stores/s1", json=circle_store("s1", 45.0, 9.0)).status_code in (200, 201)
    t = 1_909_000_000.0
    answers = [rec_client.get("/v1/stores/s1/offers", headers=ADMIN, params={"at": v}).json()
               for v in (t, _rfc3339(t, 3), str(int(t)))]
    assert all(a == answers[0] for a in answers) and answers[0]["at"] == _z(t)
    assert_problem(rec_client.get("/v1/stores/s1/offers", headers=ADMIN, params={"at": "noon"}), 422, "at")

    client.post("/v1/keys", headers=ADMIN, json={"name": "k", "roles": ["analyst"]}).raise_for_status()
    now = time.time()
    trails = [client.get("/v1/audit", headers=ADMIN, params={"from": f, "to": to}).json()
              for f, to in ((now - 60, now + 60), (_rfc3339(now - 60, 2), _rfc3339(now + 60, -3)))]
    assert trails[0] == trails[1] and ("POST", "/v1/keys") in {(e["method"], e["route"]) for e in trails[0]}
    assert_problem(client.get("/v1/audit", headers=ADMIN, params={"from": "last week"}), 422, "from")
