"""Devices that look after themselves, with their own device token, through the geo app on real
Redis (issue 16): a rotated push token, a token refresh with a grace period for the token it
replaces (honoured by the other services too), logging out, and the limits and refusals around
them."""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from vicino.services.geo.adapters.redis_keys import DeviceKeys
from vicino.services.geo.app import create_app
from vicino.services.kernel.clock import FixedClock
from vicino.services.kernel.contracts.customer_state import accepts_device_token, token_accepted
from vicino.services.kernel.times import parse_instant
from vicino.services.push_gateway.app import create_app as create_push
from vicino.services.push_gateway.settings import PushSettings
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET, circle_store, fix, make_settings, register
from tests.support import assert_problem, redis_dump, stream_events

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
APNS = "ab" * 32
GRACE_S = 600.0
TTL_S = 30 * 86_400.0


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(time.time())


@pytest.fixture
def geo(redis_url, clock):
    settings = make_settings(redis_url, token_grace_s=GRACE_S, device_token_ttl_s=TTL_S)
    with TestClient(create_app(settings, clock=clock), raise_server_exceptions=False) as c:
        yield c


FIRST_PUSH_TOKEN = {"ios": "12" * 32, "android": "fcm-first:token", "web": "web-first-token"}


def enrol(client, device_id: str, customer_id: str, platform: str) -> dict:
    """`register`, with a push token valid for the platform."""
    r = client.post("/v1/devices", headers=ADMIN, json={"device_id": device_id, "customer_id": customer_id,
                                                        "platform": platform, "push_token": FIRST_PUSH_TOKEN[platform]})
    assert r.status_code == 201, r.text
    return bearer(r.json()["token"])


def registration(redis_sync, device_id: str) -> dict:
    return {k.decode(): v.decode() for k, v in redis_sync.hgetall(DeviceKeys(device_id, 16).registration).items()}


def refresh(client, device_id: str, headers: dict):
    return client.post(f"/v1/devices/{device_id}/token", headers=headers)


def reports(client, headers: dict, device_id: str, clock: FixedClock) -> int:
    r = client.post("/v1/locations", headers=headers,
                    json={"device_id": device_id, "fixes": [fix(45.0, 9.0, clock.now() - 1)]})
    return r.status_code


def make_key(client, *roles) -> dict:
    r = client.post("/v1/keys", headers=ADMIN, json={"name": "self-service", "roles": list(roles)})
    assert r.status_code == 201, r.text
    return bearer(r.json()["key"])


# --- the rule (pure) --------------------------------------------------------------------------

def test_a_token_is_accepted_while_current_or_in_its_grace():
    assert token_accepted("b", "a", 100.0, "b", 500.0)
    assert token_accepted("b", "a", 100.0, "a", 99.9)
    assert not token_accepted("b", "a", 100.0, "a", 100.0)
    assert not token_accepted("b", "", 100.0, "", 50.0)  # no previous token: nothing empty opens anything
    assert not token_accepted("b", "a", 100.0, "c", 50.0)
    assert accepts_device_token({"token_id": "b", "prev_token_id": "a", "prev_token_until": "100.0"}, "a", 50.0)
    assert not accepts_device_token({"token_id": "b", "prev_token_id": "a", "prev_token_until": "junk"}, "a", 50.0)
    assert not accepts_device_token({"token_id": "b"}, "a", 50.0)


# --- token refresh ----------------------------------------------------------------------------

def test_a_refresh_gives_a_fresh_token_and_the_old_one_works_for_the_grace_period_only(geo, clock, redis_sync):
    old = register(geo, "phone-r", "cust-r")
    reg_before = registration(redis_sync, "phone-r")
    clock.advance(86_400)  # a day later
    r = refresh(geo, "phone-r", old)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"device_id", "token", "token_expires_at", "previous_token_valid_until"}
    assert body["device_id"] == "phone-r" and body["token_expires_at"].endswith("Z")
    assert parse_instant(body["token_expires_at"]) == pytest.approx(clock.now() + TTL_S, abs=0.01)
    assert parse_instant(body["previous_token_valid_until"]) == pytest.approx(clock.now() + GRACE_S, abs=0.01)
    new = bearer(body["token"])
    reg = registration(redis_sync, "phone-r")
    assert reg["prev_token_id"] == reg_before["token_id"] != reg["token_id"]
    assert reg["push_token"] == reg_before["push_token"]  # nothing else of the registration moved

    # during the grace period both tokens open every route of the device
    for headers in (old, new):
        assert reports(geo, headers, "phone-r", clock) == 200
        assert geo.get("/v1/devices/phone-r", headers=headers).status_code == 200
        assert geo.get("/v1/customers/cust-r/consent", headers=headers).status_code == 200
        assert geo.get("/v1/stores", headers=headers, params={"lat": 45.0, "lon": 9.0}).status_code == 200
    clock.advance(GRACE_S - 1)
    assert reports(geo, old, "phone-r", clock) == 200
    clock.advance(1)  # the grace is over: the old token stops everywhere, the new one goes on
    assert_problem(geo.post("/v1/locations", headers=old, json={"device_id": "phone-r", "fixes": [
        fix(45.0, 9.0, clock.now() - 1)]}), 401, "revoked", "register the device again")
    for path in ("/v1/devices/phone-r", "/v1/customers/cust-r/consent"):
        assert_problem(geo.get(path, headers=old), 401, "revoked")
    assert_problem(geo.get("/v1/stores", headers=old, params={"lat": 45.0, "lon": 9.0}), 401, "revoked")
    assert reports(geo, new, "phone-r", clock) == 200


def test_only_the_newest_token_may_refresh(geo, clock, redis_sync):
    first = register(geo, "phone-s", "cust-s")
    second = bearer(refresh(geo, "phone-s", first).json()["token"])
    # the replaced token still works, but may not start a second chain
    before = registration(redis_sync, "phone-s")
    body = assert_problem(refresh(geo, "phone-s", first), 401, "already refreshed", "only the newest",
                          "register the device again", code="token_already_refreshed")
    assert registration(redis_sync, "phone-s") == before
    assert parse_instant(body["detail"].split("until ")[1].split(")")[0]) == pytest.approx(clock.now() + GRACE_S, abs=0.01)
    assert reports(geo, first, "phone-s", clock) == 200
    # the newest refreshes; the first token, two refreshes behind, stops at once (one grace at a time)
    third = bearer(refresh(geo, "phone-s", second).json()["token"])
    assert_problem(refresh(geo, "phone-s", first), 401, "revoked", code="token_revoked")
    assert_problem(geo.get("/v1/devices/phone-s", headers=first), 401, "revoked", code="token_revoked")
    for headers in (second, third):
        assert reports(geo, headers, "phone-s", clock) == 200


def test_concurrent_refreshes_with_one_token_make_exactly_one_new_token(geo):
    token = register(geo, "phone-c", "cust-c")
    with ThreadPoolExecutor(5) as pool:  # 5: the default burst of token refreshes
        answers = list(pool.map(lambda _: refresh(geo, "phone-c", token), range(5)))
    assert sorted(r.status_code for r in answers) == [200] + [401] * 4, [r.text for r in answers]
    for r in answers:
        if r.status_code == 401:
            assert_problem(r, 401, "already refreshed")


def test_an_expired_token_cannot_refresh(geo, clock):
    token = register(geo, "phone-x", "cust-x")
    clock.advance(TTL_S + 1)
    assert_problem(refresh(geo, "phone-x", token), 401, "expired", "register the device again", code="token_expired")


def test_registering_again_revokes_every_token_at_once(geo, clock):
    first = register(geo, "phone-g", "cust-g")
    second = bearer(refresh(geo, "phone-g", first).json()["token"])
    third = register(geo, "phone-g", "cust-g")  # the app's server registers the phone again
    for revoked in (first, second):  # the one in its grace too: no grace after a registration
        assert_problem(geo.get("/v1/devices/phone-g", headers=revoked), 401, "revoked")
        assert_problem(refresh(geo, "phone-g", revoked), 401, "revoked")
        assert reports(geo, revoked, "phone-g", clock) == 401
    assert reports(geo, third, "phone-g", clock) == 200


def test_only_the_device_itself_refreshes_its_token(geo, redis_sync):
    mine = register(geo, "phone-m", "cust-m")
    register(geo, "phone-o", "cust-o")
    before = redis_dump(redis_sync)
    assert_problem(refresh(geo, "phone-o", mine), 403, "only for its own device")
    for key in (ADMIN, make_key(geo, "app_backend")):
        assert_problem(refresh(geo, "phone-m", key), 403, "only the device itself", "POST /v1/devices")
    assert_problem(geo.post("/v1/devices/phone-m/token"), 401, "Authorization")
    assert redis_dump(redis_sync) == before


def test_the_other_services_honour_a_token_in_its_grace(geo, rec_client, redis_url):
    old = register(geo, "phone-p", "cust-p")
    new = bearer(refresh(geo, "phone-p", old).json()["token"])
    push_settings = PushSettings(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET)
    with TestClient(create_push(push_settings), raise_server_exceptions=False) as push:
        delivery = "/v1/deliveries/dlv001" + "0" * 24
        offer = "/v1/offers/no-such-offer"
        for headers in (old, new):  # let in: the answer is about the (missing) resource, not the token
            assert_problem(push.get(delivery, headers=headers), 404, "delivery")
            assert_problem(rec_client.get(offer, headers=headers), 404)
        register(geo, "phone-p", "cust-p")  # registered again: both stop at once, everywhere
        for headers in (old, new):
            assert_problem(push.get(delivery, headers=headers), 401, "revoked")
            assert_problem(rec_client.get(offer, headers=headers), 401, "revoked")


# --- push token -------------------------------------------------------------------------------

def test_a_device_reports_its_new_push_token_and_keeps_its_device_token(geo, clock, redis_sync):
    token = enrol(geo, "phone-i", "cust-i", "ios")
    geo.put("/v1/customers/cust-i/consent", headers=ADMIN,
            json={"location": True, "marketing": True, "personalisation": True}).raise_for_status()
    # the gateway had declared the old push token dead
    dead = hashlib.sha256(FIRST_PUSH_TOKEN["ios"].encode()).hexdigest()
    assert geo.post("/v1/devices/phone-i/push-token/revocations", headers=ADMIN,
                    json={"push_token_sha256": dead, "reason": "BadDeviceToken"}).json()["revoked"] is True
    assert "push_token_revoked_at" in registration(redis_sync, "phone-i")
    token_id = registration(redis_sync, "phone-i")["token_id"]
    r = geo.put("/v1/devices/phone-i/push-token", headers=token, json={"push_token": APNS})
    assert r.status_code == 200, r.text
    assert r.json() == {"device_id": "phone-i", "platform": "ios", "push_token_updated_at": r.json()["push_token_updated_at"]}
    assert parse_instant(r.json()["push_token_updated_at"]) == pytest.approx(clock.now(), abs=0.01)
    reg = registration(redis_sync, "phone-i")
    assert reg["push_token"] == APNS and reg["token_id"] == token_id
    assert "push_token_revoked_at" not in reg and "push_token_revoked_reason" not in reg
    assert reports(geo, token, "phone-i", clock) == 200  # the device token goes on
    # the app's server may do it too
    assert geo.put("/v1/devices/phone-i/push-token", headers=make_key(geo, "app_backend"),
                   json={"push_token": "cd" * 32}).status_code == 200
    assert registration(redis_sync, "phone-i")["push_token"] == "cd" * 32


@pytest.mark.parametrize("platform, bad, words", [
    ("ios", "not-hex-at-all", ["push_token", "ios", "hex"]),
    ("ios", "ab" * 10, ["push_token", "64 to 200 hex digits"]),
    ("android", "has spaces in it", ["push_token", "android", "FCM"]),
    ("web", "tab\there", ["push_token", "web", "printable"]),
])
def test_a_push_token_invalid_for_the_platform_is_a_422_naming_the_field(geo, redis_sync, platform, bad, words):
    token = enrol(geo, "phone-v", "cust-v", platform)
    before = redis_dump(redis_sync)
    body = assert_problem(geo.put("/v1/devices/phone-v/push-token", headers=token, json={"push_token": bad}), 422, *words)
    assert body["errors"][0]["field"] == "push_token"
    assert redis_dump(redis_sync) == before


def test_push_token_refusals(geo, redis_sync):
    mine = register(geo, "phone-a", "cust-a")
    register(geo, "phone-b", "cust-b")
    before = redis_dump(redis_sync)
    assert_problem(geo.put("/v1/devices/phone-b/push-token", headers=mine, json={"push_token": "x"}), 403,
                   "only for its own device")
    assert_problem(geo.put("/v1/devices/phone-a/push-token", headers=make_key(geo, "analyst"),
                           json={"push_token": "x"}), 403, "app_backend")
    assert_problem(geo.put("/v1/devices/nobody/push-token", headers=ADMIN, json={"push_token": "x"}), 404,
                   "not registered")
    for body, field in (({}, "push_token"), ({"push_token": ""}, "push_token"),
                        ({"push_token": "x", "token": "y"}, "token"), ({"push_token": "x" * 4097}, "push_token")):
        r = geo.put("/v1/devices/phone-a/push-token", headers=mine, json=body)
        assert assert_problem(r, 422)["errors"][0]["field"] == field
    assert redis_dump(redis_sync, access=False) == before


# --- locale -------------------------------------------------------------------------------------

def test_a_device_registers_with_its_locale_stored_canonical(geo, redis_sync):
    r = geo.post("/v1/devices", headers=ADMIN, json={"device_id": "phone-it", "customer_id": "cust-it",
                                                     "platform": "android", "push_token": "t", "locale": "it_it"})
    assert r.status_code == 201, r.text
    token = bearer(r.json()["token"])
    assert registration(redis_sync, "phone-it")["locale"] == "it-IT"  # what the recommender reads
    got = geo.get("/v1/devices/phone-it", headers=token).json()
    assert got["locale"] == "it-IT" and got["timezone"] == "Europe/Rome"
    # Android 14's regional preferences ride along as a -u- extension: the language is kept
    register_again = {"device_id": "phone-it", "customer_id": "cust-it", "platform": "android", "push_token": "t"}
    r = geo.post("/v1/devices", headers=ADMIN, json={**register_again, "locale": "pt-br-u-mu-celsius"})
    assert geo.get("/v1/devices/phone-it", headers=bearer(r.json()["token"])).json()["locale"] == "pt-BR"
    # a registration replaces the one before, its locale too: none sent, none kept
    r = geo.post("/v1/devices", headers=ADMIN, json=register_again)
    assert geo.get("/v1/devices/phone-it", headers=bearer(r.json()["token"])).json()["locale"] is None
    assert registration(redis_sync, "phone-it")["locale"] == ""


@pytest.mark.parametrize("bad, words", [("xx", ["locale", "not a locale Babel"]),
                                        ("it_IT.UTF-8", ["locale", "not a BCP 47 tag"]),
                                        ("", ["locale", "empty"]),
                                        ("en-" + "a" * 90, ["locale"]),
                                        (42, ["locale"])])
def test_a_locale_babel_cannot_read_is_a_422_naming_the_field_and_nothing_is_stored(geo, redis_sync, bad, words):
    before = redis_dump(redis_sync, access=False)
    body = assert_problem(geo.post("/v1/devices", headers=ADMIN, json={
        "device_id": "phone-x", "customer_id": "cust-x", "platform": "android", "push_token": "t", "locale": bad}),
        422, *words)
    assert body["errors"][0]["field"] == "locale"
    assert redis_dump(redis_sync, access=False) == before
    token = enrol(geo, "phone-y", "cust-y", "android")
    before = redis_dump(redis_sync, access=False)
    body = assert_problem(geo.put("/v1/devices/phone-y/locale", headers=token, json={"locale": bad}), 422, *words)
    assert body["errors"][0]["field"] == "locale"
    assert redis_dump(redis_sync, access=False) == before


def test_a_device_changes_its_locale_and_keeps_its_device_token(geo, clock, redis_sync):
    token = enrol(geo, "phone-l10n", "cust-l10n", "ios")
    token_id = registration(redis_sync, "phone-l10n")["token_id"]
    r = geo.put("/v1/devices/phone-l10n/locale", headers=token, json={"locale": "en-gb"})
    assert r.status_code == 200, r.text
    assert r.json() == {"device_id": "phone-l10n", "locale": "en-GB", "locale_updated_at": r.json()["locale_updated_at"]}
    assert parse_instant(r.json()["locale_updated_at"]) == pytest.approx(clock.now(), abs=0.01)
    reg = registration(redis_sync, "phone-l10n")
    assert reg["locale"] == "en-GB" and reg["token_id"] == token_id
    assert geo.get("/v1/devices/phone-l10n", headers=token).json()["locale"] == "en-GB"
    # the app's server may do it too; null forgets it
    backend = make_key(geo, "app_backend")
    assert geo.put("/v1/devices/phone-l10n/locale", headers=backend, json={"locale": "de-CH"}).json()["locale"] == "de-CH"
    assert registration(redis_sync, "phone-l10n")["locale"] == "de-CH"
    assert geo.put("/v1/devices/phone-l10n/locale", headers=token, json={"locale": None}).json()["locale"] is None
    assert geo.get("/v1/devices/phone-l10n", headers=token).json()["locale"] is None


def test_locale_refusals(geo, redis_sync):
    mine = register(geo, "phone-a", "cust-a")
    register(geo, "phone-b", "cust-b")
    before = redis_dump(redis_sync)
    assert_problem(geo.put("/v1/devices/phone-b/locale", headers=mine, json={"locale": "it"}), 403,
                   "only for its own device")
    assert_problem(geo.put("/v1/devices/phone-a/locale", headers=make_key(geo, "analyst"),
                           json={"locale": "it"}), 403, "app_backend")
    assert_problem(geo.put("/v1/devices/nobody/locale", headers=ADMIN, json={"locale": "it"}), 404, "not registered")
    for body, field in (({}, "locale"), ({"locale": "it", "lang": "it"}, "lang")):
        r = geo.put("/v1/devices/phone-a/locale", headers=mine, json=body)
        assert assert_problem(r, 422)["errors"][0]["field"] == field
    assert redis_dump(redis_sync, access=False) == before


# --- logging out ------------------------------------------------------------------------------

def test_a_device_logs_out_its_visits_end_and_all_its_tokens_stop(geo, clock, redis_sync):
    assert geo.put("/v1/stores/shop", headers=ADMIN, json=circle_store("shop", 45.0, 9.0, 60)).status_code == 201
    first = register(geo, "phone-l", "cust-l")
    r = geo.post("/v1/locations", headers=first, json={"device_id": "phone-l", "fixes": [fix(45.0, 9.0, clock.now() - 5)]})
    visit = r.json()["events"][0]["visit_id"]
    second = bearer(refresh(geo, "phone-l", first).json()["token"])  # `first` is in its grace
    assert_problem(geo.delete("/v1/devices/phone-l", headers=register(geo, "phone-z", "cust-z")), 403, "own device")

    assert geo.delete("/v1/devices/phone-l", headers=second).status_code == 204
    last = stream_events(redis_sync, "phone-l")[-1]
    assert (last.type, last.visit_id, last.exit_reason) == ("exit", visit, "device_removed")
    assert not redis_sync.exists(DeviceKeys("phone-l", 16).registration)
    assert not redis_sync.exists(DeviceKeys("phone-l", 16).state)
    assert not redis_sync.sismember("vicino:{cust:cust-l}:devices", "phone-l")
    for headers in (first, second):
        assert_problem(geo.get("/v1/devices/phone-l", headers=headers), 401, "revoked", code="token_revoked")
        assert_problem(geo.delete("/v1/devices/phone-l", headers=headers), 401, "revoked", code="token_revoked")
        assert_problem(refresh(geo, "phone-l", headers), 401, "revoked", code="token_revoked")
        assert_problem(geo.put("/v1/devices/phone-l/push-token", headers=headers, json={"push_token": "x"}), 401,
                       "revoked", code="token_revoked")
        # the location route too (it answered 404 "not registered" once: the token is what failed)
        r = geo.post("/v1/locations", headers=headers, json={"device_id": "phone-l", "fixes": [fix(45.0, 9.0, clock.now() - 1)]})
        assert_problem(r, 401, "revoked", code="token_revoked")
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert_problem(geo.delete("/v1/devices/phone-l", headers=ADMIN), 404, "not registered")


def test_the_device_routes_answer_times_in_rfc3339(geo, clock):
    token = register(geo, "phone-t", "cust-t")
    body = geo.get("/v1/devices/phone-t", headers=token).json()
    assert body["registered_at"].endswith("Z") and parse_instant(body["registered_at"]) == pytest.approx(clock.now(), abs=0.01)
    r = geo.post("/v1/devices", headers=ADMIN, json={"device_id": "phone-t", "customer_id": "cust-t",
                                                     "platform": "android", "push_token": "abc"})
    assert r.json()["token_expires_at"].endswith("Z")


# --- rate limits ------------------------------------------------------------------------------

def test_a_phone_hammering_token_refresh_gets_429(redis_url, clock):
    settings = make_settings(redis_url, rate_limit_token_refresh_burst=3, rate_limit_token_refresh_per_s=0.001)
    with TestClient(create_app(settings, clock=clock), raise_server_exceptions=False) as geo:
        token = register(geo, "phone-h", "cust-h")
        calm = register(geo, "phone-q", "cust-q")
        for _ in range(3):
            r = refresh(geo, "phone-h", token)
            assert r.status_code == 200, r.text
            token = bearer(r.json()["token"])
        r = refresh(geo, "phone-h", token)
        assert_problem(r, 429, "this device", "token refreshes")
        assert int(r.headers["Retry-After"]) >= 1
        # its other routes, and other phones, have buckets of their own
        assert geo.get("/v1/devices/phone-h", headers=token).status_code == 200
        assert refresh(geo, "phone-q", calm).status_code == 200
