"""The push gateway against protocol-faithful local providers that these tests start: an
HTTP/1.1 server that behaves like FCM HTTP v1 and Google's token endpoint, an HTTP/2 + TLS server
that behaves like APNs (testbed/push_servers). Token pruning, error mapping, retries, token
refresh, multiplexing, start-up checks, and a worker SIGKILLed mid-send."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.deliveries import customer_deliveries_key, delivery_id_for
from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import push_jobs_stream_key
from vicino.services.push_gateway.app import create_app
from vicino.services.push_gateway.wiring import ProviderClients
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
from tests.integration._push_support import enqueue, make_job
from tests.support import ROOT, free_port, wait_until
from tests.integration.test_push_gateway import (ADMIN, dead, delivery_of, push_settings, register, settled)
from testbed.push_servers import apns_like, fcm_like, make_service_account

TOPIC = "com.vicino.app"


# the stand-ins, per module
from tests.push_provider_fixtures import apns, apns_server, fcm, fcm_server, material  # noqa: E402,F401


@contextlib.contextmanager
def gateway(redis_url: str, geo_url: str, material, fcm=None, apns=None, **kw):
    cfg = {}
    if fcm is not None:
        cfg.update(fcm_credentials=str(fcm.sa.path), fcm_endpoint=fcm.url)
    if apns is not None:
        key = material["apns_key"]
        cfg.update(apns_key_file=str(key.path), apns_key_id=key.key_id, apns_team_id=key.team_id, apns_topic=TOPIC,
                   apns_endpoint=apns.url)
    settings = push_settings(redis_url, **{**cfg, **kw})
    clients = ProviderClients(fcm=httpx.AsyncClient(),
                              apns=httpx.AsyncClient(http2=True, verify=material["tls"].client_context()))
    app = create_app(settings, clients=clients, geo_http=httpx.AsyncClient(base_url=geo_url),
                     recommender_http=httpx.AsyncClient(base_url=geo_url), consumer_name="test-worker")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def registration_token(redis_sync, device_id: str) -> bytes:
    key = redis_sync.keys(f"vicino:*:device:{device_id}:registration")[0]
    return redis_sync.hget(key, "push_token")


# --- FCM ------------------------------------------------------------------------------------------

def test_fcm_delivery_with_cached_oauth_token(redis_url, redis_sync, geo_http, geo_url, material, fcm):
    token = fcm_like.registration_token(11)
    register(geo_http, "fa-dev", "fa-cust", platform="android", push_token=token)
    with gateway(redis_url, geo_url, material, fcm=fcm) as client:
        jobs = [make_job("fa-cust", "fa-dev", push_token=token, ttl_s=600) for _ in range(3)]
        for j in jobs:
            enqueue(redis_sync, j)
        done = [settled(client, j) for j in jobs]
    assert {d["status"] for d in done} == {"sent"} and {d["provider"] for d in done} == {"fcm"}
    sent = [r for r in fcm.received if r.path.endswith("messages:send")]
    assert len(sent) == 3 and fcm.grants == 1  # one OAuth exchange serves every send until near expiry
    m = sent[0].json["message"]
    assert m["token"] == token and m["notification"]["title"] == "An offer near you"
    assert set(m["data"]) == {"offer_id", "store_id", "visit_id", "decision_id", "delivery_id"}
    assert m["android"]["collapse_key"] == m["data"]["visit_id"]
    assert 0 < int(m["android"]["ttl"].rstrip("s")) <= 600  # never longer than the job's remaining life
    assert sent[0].headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize("reply", ["unregistered", "invalid_token", "sender_id_mismatch"])
def test_fcm_dead_tokens_are_pruned_not_retried(redis_url, redis_sync, geo_http, geo_url, material, fcm, reply):
    token = fcm_like.registration_token(12)
    register(geo_http, "fb-dev", "fb-cust", platform="android", push_token=token)
    fcm.script(token, getattr(fcm_like, reply)())
    with gateway(redis_url, geo_url, material, fcm=fcm) as client:
        job = make_job("fb-cust", "fb-dev", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job)
        assert d["status"] == "token_invalid" and d["attempts"] == 1
        wait_until(lambda: registration_token(redis_sync, "fb-dev") == b"", 10, what="token removed at geo")
    assert len([r for r in fcm.received if r.token == token]) == 1


def test_fcm_invalid_argument_goes_to_the_dead_letters(redis_url, redis_sync, geo_http, geo_url, material, fcm):
    token = fcm_like.registration_token(13)
    register(geo_http, "fc-dev", "fc-cust", platform="android", push_token=token)
    fcm.script(token, fcm_like.invalid_argument("Invalid value at 'message.android.ttl'"))
    with gateway(redis_url, geo_url, material, fcm=fcm) as client:
        job = make_job("fc-cust", "fc-dev", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job)
    assert d["status"] == "failed" and "INVALID_ARGUMENT" in d["reason"]
    assert any("INVALID_ARGUMENT" in x["dead_reason"] for x in dead(redis_sync, "fc-cust"))
    assert registration_token(redis_sync, "fc-dev") == token.encode()  # not a token problem: kept


def test_fcm_throttling_and_faults_are_retried_honouring_retry_after(redis_url, redis_sync, geo_http, geo_url,
                                                                      material, fcm):
    token = fcm_like.registration_token(14)
    register(geo_http, "fd-dev", "fd-cust", platform="android", push_token=token)
    fcm.script(token, fcm_like.quota_exceeded(retry_after=2), fcm_like.malformed(status=500), fcm_like.drop(),
               fcm_like.slow(2.0))
    with gateway(redis_url, geo_url, material, fcm=fcm, provider_timeout_s=0.5, retry_base_s=0.1) as client:
        job = make_job("fd-cust", "fd-dev", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job, 30)
    assert d["status"] == "sent" and d["attempts"] == 5
    reasons = [h.get("reason", "") for h in d["history"] if h["status"] == "queued"][1:]
    assert "429" in reasons[0] and "500" in reasons[1] and "unreachable" in reasons[2] and "timeout" in reasons[3]
    times = [r.received_at for r in fcm.received if r.token == token]
    assert times[1] - times[0] >= 2.0  # Retry-After: 2


def test_fcm_401_refreshes_the_access_token_once_then_alerts(redis_url, redis_sync, geo_http, geo_url, material,
                                                             fcm):
    token = fcm_like.registration_token(15)
    register(geo_http, "fe-dev", "fe-cust", platform="android", push_token=token)
    with gateway(redis_url, geo_url, material, fcm=fcm) as client:
        first = make_job("fe-cust", "fe-dev", push_token=token)
        enqueue(redis_sync, first)
        assert settled(client, first)["status"] == "sent"
        fcm.revoke_access_tokens()  # Google revoked the token early: one refresh, then it works
        second = make_job("fe-cust", "fe-dev", push_token=token)
        enqueue(redis_sync, second)
        assert settled(client, second)["status"] == "sent"
        assert fcm.grants == 2
        fcm.script(token, fcm_like.unauthenticated(), fcm_like.unauthenticated())  # refused even when fresh
        third = make_job("fe-cust", "fe-dev", push_token=token)
        enqueue(redis_sync, third)
        d = wait_until(lambda: (x := delivery_of(client, third)) and x["attempts"] >= 1 and x["status"] == "queued"
                       and x, 10, what="auth failure recorded")
        assert "auth" in d["reason"]
        metrics = client.get("/metrics").text
        assert 'vicino_push_provider_auth_failures_total{provider="fcm"} 1.0' in metrics
        assert settled(client, third, 15)["status"] == "sent"  # the next attempt goes through


def test_payload_over_4_kib_fails_without_a_send(redis_url, redis_sync, geo_http, geo_url, material, fcm, apns):
    ftoken, atoken = fcm_like.registration_token(16), apns_like.device_token(16)
    register(geo_http, "ff-dev", "ff-cust", platform="android", push_token=ftoken)
    register(geo_http, "fi-dev", "fi-cust", platform="ios", push_token=atoken)
    with gateway(redis_url, geo_url, material, fcm=fcm, apns=apns) as client:
        big = [make_job("ff-cust", "ff-dev", body="€" * 1500), make_job("fi-cust", "fi-dev", body="€" * 1500)]
        for j in big:
            enqueue(redis_sync, j)
        outcomes = [settled(client, j) for j in big]
    assert [o["status"] for o in outcomes] == ["failed", "failed"]
    assert all("payload_too_large" in o["reason"] for o in outcomes)
    assert fcm.received == [] or all(r.path.endswith("/token") for r in fcm.received)
    assert apns.received == []


# --- APNs -----------------------------------------------------------------------------------------

def test_apns_over_http2_multiplexes_on_one_connection(redis_url, redis_sync, geo_http, geo_url, material, apns):
    devices = [(f"ap-dev-{i}", f"ap-cust-{i}", apns_like.device_token(100 + i)) for i in range(40)]
    for dev, cust, tok in devices:
        register(geo_http, dev, cust, platform="ios", push_token=tok)
    with gateway(redis_url, geo_url, material, apns=apns) as client:
        jobs = [make_job(cust, dev, platform="ios", push_token=tok) for dev, cust, tok in devices]
        for j in jobs:
            enqueue(redis_sync, j)
        done = [settled(client, j) for j in jobs]
    assert {d["status"] for d in done} == {"sent"} and {d["provider"] for d in done} == {"apns"}
    assert apns.connections_accepted == 1 and apns.max_open_streams > 1
    r = apns.received[0]
    assert r.headers["apns-topic"] == TOPIC and r.headers["apns-push-type"] == "alert"
    job = next(j for j in jobs if j.push_token == r.token)
    assert r.headers["apns-collapse-id"] == job.collapse_key
    assert r.headers["apns-expiration"] == str(int(job.expires_at))
    assert r.json["aps"]["alert"]["title"] == "An offer near you" and r.json["offer_id"] == "offer-1"


@pytest.mark.parametrize("reply", ["bad_device_token", "unregistered"])
def test_apns_dead_tokens_are_pruned(redis_url, redis_sync, geo_http, geo_url, material, apns, reply):
    token = apns_like.device_token(200)
    register(geo_http, "aq-dev", "aq-cust", platform="ios", push_token=token)
    apns.script(token, getattr(apns_like, reply)())
    with gateway(redis_url, geo_url, material, apns=apns) as client:
        job = make_job("aq-cust", "aq-dev", platform="ios", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job)
        assert d["status"] == "token_invalid"
        wait_until(lambda: registration_token(redis_sync, "aq-dev") == b"", 10, what="token removed at geo")


def test_apns_expired_provider_token_and_throttling(redis_url, redis_sync, geo_http, geo_url, material, apns):
    token = apns_like.device_token(201)
    register(geo_http, "ar-dev", "ar-cust", platform="ios", push_token=token)
    apns.script(token, apns_like.expired_provider_token(), apns_like.too_many_requests(retry_after=1),
                apns_like.reset(), apns_like.unavailable())
    with gateway(redis_url, geo_url, material, apns=apns, retry_base_s=0.1) as client:
        job = make_job("ar-cust", "ar-dev", platform="ios", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job, 20)
    assert d["status"] == "sent" and d["attempts"] == 4  # the expired JWT was replaced within attempt 1
    tries = [r for r in apns.received if r.token == token]
    assert len(tries) == 5 and tries[0].headers["authorization"] != tries[1].headers["authorization"]
    assert tries[2].received_at - tries[1].received_at >= 1.0


# --- start-up checks and crashes ------------------------------------------------------------------

def _serve_push(env: dict, log: Path) -> subprocess.Popen:
    full = {**os.environ, "VICINO_ADMIN_TOKEN": ADMIN_TOKEN, "VICINO_TOKEN_SECRET": TOKEN_SECRET, **env}
    return subprocess.Popen([sys.executable, "-m", "vicino.services.cli", "serve", "push", "--host", "127.0.0.1",
                             "--port", str(free_port())], cwd=ROOT, env=full, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("bad, needle", [
    ({"VICINO_APNS_KEY_FILE": "KEY", "VICINO_APNS_KEY_ID": "K", "VICINO_APNS_TOPIC": "t"}, "VICINO_APNS_TEAM_ID"),
    ({"VICINO_APNS_KEY_FILE": "GARBAGE", "VICINO_APNS_KEY_ID": "K", "VICINO_APNS_TEAM_ID": "T",
      "VICINO_APNS_TOPIC": "t"}, "not a PEM private key"),
    ({"VICINO_FCM_CREDENTIALS": "GARBAGE"}, "not JSON"),
    ({"VICINO_WEBHOOK_URL": "http://127.0.0.1:9/h"}, "VICINO_WEBHOOK_SECRET"),
])
def test_an_incomplete_provider_refuses_to_start_with_one_clear_message(redis_url, tmp_path, material, bad, needle):
    garbage = tmp_path / "garbage.p8"
    garbage.write_text("this is not a key")
    env = {k: str(material["apns_key"].path) if v == "KEY" else str(garbage) if v == "GARBAGE" else v
           for k, v in bad.items()}
    log = tmp_path / "push.log"
    proc = _serve_push({"VICINO_REDIS_URL": redis_url, **env}, log)
    assert proc.wait(60) == 2
    out = log.read_text()
    assert "refusing to start" in out and needle in out, out


def test_sigkill_between_send_and_ack_sends_exactly_once(redis_url, redis_sync, geo_http, geo_url, material, fcm,
                                                         tmp_path):
    token = fcm_like.registration_token(17)
    register(geo_http, "fk-dev", "fk-cust", platform="android", push_token=token)
    fcm.script(token, fcm_like.slow(30.0))  # the provider has the message; its answer never comes back
    env = {"VICINO_REDIS_URL": redis_url, "VICINO_GEO_URL": geo_url, "VICINO_FCM_CREDENTIALS": str(fcm.sa.path),
           "VICINO_FCM_ENDPOINT": fcm.url, "VICINO_CLAIM_IDLE_MS": "300", "VICINO_PROVIDER_TIMEOUT_S": "1"}
    log = tmp_path / "push.log"
    job = make_job("fk-cust", "fk-dev", push_token=token)
    first = _serve_push(env, log)
    try:
        enqueue(redis_sync, job)
        wait_until(lambda: any(r.token == token for r in fcm.received), 30, what="the provider got the message")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        second = _serve_push(env, log)
        try:
            shard = customer_shard("fk-cust", 16)
            did = delivery_id_for(job.idempotency_key, shard)

            def reconciled():
                raw = redis_sync.hget(customer_deliveries_key("fk-cust", 16), did)
                rec = orjson.loads(raw) if raw else None
                return rec if rec and rec["status"] not in ("queued", "sending") else None
            rec = wait_until(reconciled, 30, 0.1, "the delivery reconciled")
            wait_until(lambda: redis_sync.xpending(push_jobs_stream_key(shard), "push-gateway")["pending"] == 0, 10,
                       what="job acknowledged")
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
    assert rec["status"] == "sent" and rec["confirmed"] is False and "outcome unknown" in rec["reason"]
    assert len([r for r in fcm.received if r.token == token]) == 1  # exactly one message arrived


def test_a_fix_at_a_store_ends_as_one_notification_at_apns(rec_settings, tmp_path, geo_http, geo_url, redis_sync,
                                                           material, apns):
    """All real: fix → geo enter event → the recommender worker's decision → push job → the
    gateway → one HTTP/2 request at the APNs stand-in, for the offer the ranking put first."""
    import asyncio

    from vicino.services.runtime.redis_client import open_async
    from vicino.services.recommender.app import create_app as create_recommender
    from vicino.services.recommender.wiring import build_worker_loops
    from tests.support import fix_until_enter
    from tests.integration.test_offers_api import make_version, offer

    root = tmp_path / "models"
    make_version(root, "v1")
    settings = rec_settings.model_copy(update={"model_dir": str(root), "decide_on": "enter", "quiet_hours": "",
                                               "holdout_percent": 0})
    with TestClient(create_recommender(settings)) as rec:
        for oid, items in (("o1", ["i1"]), ("o2", ["i2"])):
            assert rec.put(f"/v1/offers/{oid}", headers=ADMIN, json=offer(oid, items)).status_code == 201
    geo_http.put("/v1/stores/shop-e2e", json={"type": "Feature", "id": "shop-e2e", "properties": {"radius_m": 80},
                                               "geometry": {"type": "Point", "coordinates": [7.68, 45.07]}})
    apns_token = apns_like.device_token(300)
    device_token = register(geo_http, "phone-e2e", "u-e2e", platform="ios", push_token=apns_token)
    events = fix_until_enter(geo_http, {"Authorization": f"Bearer {device_token}"}, "phone-e2e", 45.07, 7.68,
                             "shop-e2e")
    visit = next(e["visit_id"] for e in events if e["store_id"] == "shop-e2e")

    async def decide():
        redis = open_async(settings.redis_url)
        stop = asyncio.Event()
        try:
            loops = build_worker_loops(settings, redis, "test-worker")
            tasks = [asyncio.create_task(loops[name](stop)) for name in ("model", "decisions")]
            for _ in range(100):
                await asyncio.sleep(0.1)
                if redis_sync.xlen(push_jobs_stream_key(customer_shard("u-e2e", 16))):
                    break
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            await redis.aclose()

    asyncio.run(decide())
    with gateway(settings.redis_url, geo_url, material, apns=apns) as client:
        wait_until(lambda: len(apns.received) == 1, 15, what="the notification at APNs")
        time.sleep(0.3)  # would a second one follow? (it must not)
        listed = client.get("/v1/deliveries", params={"device_id": "phone-e2e"}, headers=ADMIN).json()
    assert len(apns.received) == 1
    r = apns.received[0]
    assert r.token == apns_token and r.json["offer_id"] == "o1" and r.json["visit_id"] == visit
    assert r.headers["apns-collapse-id"] == visit
    [d] = listed["deliveries"]
    assert (d["status"], d["offer_id"], d["store_id"], d["visit_id"]) == ("sent", "o1", "shop-e2e", visit)


def test_provider_tokens_are_renewed_on_time(material):
    """FCM: the OAuth token is reused until 5 minutes before Google's expiry; APNs: the JWT is
    reused for `refresh_s` (Apple: between 20 and 60 minutes old), then signed anew."""
    import asyncio

    from vicino.services.push_gateway.adapters.providers.apns import ApnsKey, ApnsProviderTokens
    from vicino.services.push_gateway.adapters.providers.fcm import FcmAccessTokens, ServiceAccount

    short = fcm_like.start_in_thread(project_id="vicino-test", access_token_ttl_s=301.5)  # 1.5 s past the margin
    try:
        short.add_service_account(sa := make_service_account(material["dir"] / "short", short.token_url))

        async def fcm_tokens():
            async with httpx.AsyncClient() as http:
                tokens = FcmAccessTokens(ServiceAccount.load(str(sa.path)), http)
                a, b = await tokens.get(), await tokens.get()
                await asyncio.sleep(1.7)
                return a, b, await tokens.get(), tokens.grants

        a, b, c, grants = asyncio.run(fcm_tokens())
    finally:
        short.stop()
    assert a == b != c and grants == 2
    key = material["apns_key"]
    t = [1_800_000_000.0]
    jwts = ApnsProviderTokens(ApnsKey.load(str(key.path), key.key_id, key.team_id), refresh_s=2400,
                              clock=lambda: t[0])
    first = jwts.get()
    t[0] += 2399
    assert jwts.get() == first
    t[0] += 1
    assert jwts.get() != first and jwts.issued == 2


def test_the_gateway_says_which_provider_serves_each_platform(material, fcm):
    from vicino.services.push_gateway.wiring import check_providers

    key = material["apns_key"]
    only_fcm = push_settings("redis://127.0.0.1:9", fcm_credentials=str(fcm.sa.path))
    assert check_providers(only_fcm) == ["android → fcm", "ios → log (APNs not configured)", "web → log"]
    full = push_settings("redis://127.0.0.1:9", apns_key_file=str(key.path), apns_key_id=key.key_id,
                         apns_team_id=key.team_id, apns_topic=TOPIC, webhook_url="http://127.0.0.1:9/h",
                         webhook_secret="s" * 16)
    assert check_providers(full) == ["android → webhook (FCM not configured)", "ios → apns", "web → webhook"]
