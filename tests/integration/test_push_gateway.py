"""The push gateway against a real Redis, the real geo service and a real webhook receiver:
exactly one delivery per visit, expiry, suppression, retries, token pruning, dead letters,
receipts and opens."""
from __future__ import annotations

import contextlib
import time

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from vicino.services.kernel.contracts.deliveries import (DeliveryReceiptV1, dead_jobs_stream_key, delivery_id_for,
                                                  receipts_stream_key)
from vicino.services.kernel.contracts.interactions import customer_shard, merged_into_key
from vicino.services.kernel.contracts.push_jobs import ended_visits_key, push_jobs_stream_key
from vicino.services.push_gateway.app import create_app
from vicino.services.push_gateway.domain.messages import verify_webhook_signature
from vicino.services.push_gateway.settings import PushSettings
from vicino.services.push_gateway.wiring import ProviderClients
from tests.conftest import ADMIN_TOKEN, TOKEN_SECRET
from tests.integration._push_support import enqueue, make_job, webhook_sink
from tests.support import assert_problem, epoch, wait_until

SECRET = "webhook-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def push_settings(redis_url: str, **kw) -> PushSettings:
    base = dict(redis_url=redis_url, admin_token=ADMIN_TOKEN, token_secret=TOKEN_SECRET, retry_base_s=0.2,
                claim_idle_ms=1000)
    return PushSettings(**{**base, **kw})


@contextlib.contextmanager
def gateway(settings: PushSettings, geo_url: str, recommender_url: str | None = None):
    app = create_app(settings, clients=ProviderClients(webhook=httpx.AsyncClient()),
                     geo_http=httpx.AsyncClient(base_url=geo_url),
                     recommender_http=httpx.AsyncClient(base_url=recommender_url or geo_url),
                     consumer_name="test-worker")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def register(geo_http, device_id: str, customer_id: str, *, platform: str = "web", marketing: bool = True,
             push_token: str | None = None) -> str:
    """Registers the device through the geo service, with consent; returns its device token."""
    r = geo_http.post("/v1/devices", json={"device_id": device_id, "customer_id": customer_id, "platform": platform,
                                           "push_token": push_token or f"ptok-{device_id}"})
    assert r.status_code == 201, r.text
    c = geo_http.put(f"/v1/customers/{customer_id}/consent",
                     json={"location": True, "marketing": marketing, "personalisation": True})
    assert c.status_code == 200, c.text
    return r.json()["token"]


def delivery_of(client: TestClient, job) -> dict | None:
    did = delivery_id_for(job.idempotency_key, customer_shard(job.customer_id, 16))
    r = client.get(f"/v1/deliveries/{did}", headers=ADMIN)
    return r.json() if r.status_code == 200 else None


def settled(client: TestClient, job, timeout_s: float = 10.0) -> dict:
    def done():
        d = delivery_of(client, job)
        return d if d and d["status"] not in ("queued", "sending") else None
    return wait_until(done, timeout_s, 0.05, "delivery settled")


def receipts(redis_sync, customer_id: str) -> list[DeliveryReceiptV1]:
    stream = receipts_stream_key(customer_shard(customer_id, 16))
    return [DeliveryReceiptV1.from_stream_fields(f) for _, f in redis_sync.xrange(stream)]


def pending(redis_sync, customer_id: str) -> int:
    stream = push_jobs_stream_key(customer_shard(customer_id, 16))
    return redis_sync.xpending(stream, "push-gateway")["pending"]


def dead(redis_sync, customer_id: str) -> list[dict]:
    stream = dead_jobs_stream_key(customer_shard(customer_id, 16))
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_sync.xrange(stream)]


def test_webhook_delivery_is_signed_and_once_per_visit_with_receipts(redis_url, redis_sync, geo_http, geo_url):
    register(geo_http, "w-dev", "w-cust")
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        job = make_job("w-cust", "w-dev", platform="web")
        enqueue(redis_sync, job)
        enqueue(redis_sync, job)  # the same job delivered twice to the gateway
        again = job.model_copy(update={"job_id": "job_other"})  # or a second job for the same visit
        enqueue(redis_sync, again)
        d = settled(client, job)
        wait_until(lambda: pending(redis_sync, "w-cust") == 0, 10, what="all three entries acknowledged")
        assert d["status"] == "sent" and d["provider"] == "webhook" and d["attempts"] == 1 and d["confirmed"]
        assert [h["status"] for h in d["history"]] == ["queued", "sent"]
        # the receipt's times are RFC 3339 UTC (the record and the stream keep epoch seconds)
        assert epoch(d["created_at"]) == pytest.approx(job.created_at, abs=1e-3)
        assert epoch(d["expires_at"]) == pytest.approx(job.expires_at, abs=1e-3)
        assert d["opened_at"] is None and d["next_attempt_at"] is None
        assert job.created_at - 1 <= epoch(d["history"][0]["at"]) <= epoch(d["history"][1]["at"]) <= time.time()
        assert len(sink.received) == 1
        req = sink.received[0]
        assert verify_webhook_signature(SECRET, req["headers"]["vicino-timestamp"], req["body"],
                                        req["headers"]["vicino-signature"], time.time())
        body = orjson.loads(req["body"])
        assert body["push_token"] == "ptok-w-dev" and body["data"]["delivery_id"] == d["delivery_id"]
        assert body["data"]["offer_id"] == "offer-1" and body["collapse_key"] == job.collapse_key
        # an outward JSON contract: its times are RFC 3339 like the API's
        assert epoch(body["expires_at"]) == pytest.approx(job.expires_at, abs=1e-3)
        assert abs(epoch(body["sent_at"]) - int(req["headers"]["vicino-timestamp"])) < 2
        assert [r.status for r in receipts(redis_sync, "w-cust")] == ["queued", "sent"]
        listed = client.get("/v1/deliveries", params={"customer_id": "w-cust"}, headers=ADMIN).json()
        assert [x["delivery_id"] for x in listed["deliveries"]] == [d["delivery_id"]]
        by_device = client.get("/v1/deliveries", params={"device_id": "w-dev"}, headers=ADMIN).json()
        assert by_device["customer_id"] == "w-cust" and len(by_device["deliveries"]) == 1


def test_expired_ended_and_unconsented_pushes_are_not_sent(redis_url, redis_sync, geo_http, geo_url):
    register(geo_http, "x-dev", "x-cust")
    register(geo_http, "n-dev", "n-cust", marketing=False)
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        expired = make_job("x-cust", "x-dev", platform="web", created_at=time.time() - 1000, ttl_s=900)
        ended = make_job("x-cust", "x-dev", platform="web")
        redis_sync.zadd(ended_visits_key("x-cust", 16), {ended.data.visit_id: time.time()})
        unconsented = make_job("n-cust", "n-dev", platform="web")
        gone_device = make_job("x-cust", "no-such-device", platform="web")
        for j in (expired, ended, unconsented, gone_device):
            enqueue(redis_sync, j)
        assert settled(client, expired)["status"] == "expired"
        e = settled(client, ended)
        assert (e["status"], e["reason"]) == ("suppressed", "visit_ended")
        u = settled(client, unconsented)
        assert (u["status"], u["reason"]) == ("suppressed", "no_marketing_consent")
        g = settled(client, gone_device)
        assert (g["status"], g["reason"]) == ("suppressed", "device_unregistered")
        assert sink.received == []


def test_a_test_send_is_delivered_marked_as_a_test_whatever_its_visit_but_not_after_its_expiry(
        redis_url, redis_sync, geo_http, geo_url):
    me = {"Authorization": "Bearer " + register(geo_http, "ts-dev", "ts-cust")}
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url, "http://127.0.0.1:9") as client:
        test = make_job("ts-cust", "ts-dev", platform="web", campaign_id="spring", test=True,
                        deep_link="vicino://offers/offer-1")
        # its visit id names no visit; were it marked ended, a test is still sent
        redis_sync.zadd(ended_visits_key("ts-cust", 16), {test.data.visit_id: time.time()})
        late = make_job("ts-cust", "ts-dev", platform="web", campaign_id="spring", test=True,
                        created_at=time.time() - 1000, ttl_s=900)
        real = make_job("ts-cust", "ts-dev", platform="web", campaign_id="spring")
        for j in (test, late, real):
            enqueue(redis_sync, j)
        d = settled(client, test)
        assert (d["status"], d["campaign_id"], d["test"]) == ("sent", "spring", True)
        assert settled(client, late)["status"] == "expired"  # a test expires like any push
        r = settled(client, real)
        assert (r["status"], r["campaign_id"], r["test"]) == ("sent", "spring", False)
        by_delivery = {}
        for rc in receipts(redis_sync, "ts-cust"):
            by_delivery.setdefault(rc.delivery_id, []).append(rc)
        assert {(rc.status, rc.campaign_id, rc.test) for rc in by_delivery[d["delivery_id"]]} == \
            {("queued", "spring", True), ("sent", "spring", True)}
        assert {rc.test for rc in by_delivery[r["delivery_id"]]} == {False}
        bodies = {b["delivery_id"]: b for b in sink.bodies()}
        assert set(bodies) == {d["delivery_id"], r["delivery_id"]}
        sent = bodies[d["delivery_id"]]
        assert (sent["campaign_id"], sent["test"], sent["deep_link"]) == ("spring", True, "vicino://offers/offer-1")
        assert (sent["data"]["campaign_id"], sent["data"]["test"]) == ("spring", "1")
        assert "test" not in bodies[r["delivery_id"]]["data"]
        # opened: recorded on the delivery, never told to the recommender (it is away here, and a
        # real push's open would be a 503 until it answers)
        opened = client.post(f"/v1/deliveries/{d['delivery_id']}/opened", headers=me)
        assert opened.status_code == 200 and opened.json()["opened_at"] is not None, opened.text
        assert_problem(client.post(f"/v1/deliveries/{r['delivery_id']}/opened", headers=me), 503, "recommender")
        assert [(rc.status, rc.test) for rc in receipts(redis_sync, "ts-cust") if rc.status == "opened"] == \
            [("opened", True), ("opened", False)]


def test_a_device_handed_to_another_customer_does_not_get_the_previous_owners_push(redis_url, redis_sync, geo_http,
                                                                                    geo_url):
    old_owner = {"Authorization": "Bearer " + register(geo_http, "h-dev", "h-old")}
    # h-old was merged into h-cust (the recommender's pointer): the job names the survivor
    redis_sync.set(merged_into_key("h-old", 16), "h-cust")
    assert geo_http.put("/v1/customers/h-cust/consent", json={"location": True, "marketing": True,
                                                              "personalisation": True}).status_code == 200
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        merged = make_job("h-cust", "h-dev", platform="web")
        enqueue(redis_sync, merged)
        sent = settled(client, merged)
        assert sent["status"] == "sent"  # the same person, under their surviving id
        assert client.get(f"/v1/deliveries/{sent['delivery_id']}", headers=old_owner).status_code == 200
        queued = make_job("h-cust", "h-dev", platform="web")
        # the phone changed hands after the job was queued
        new_owner = {"Authorization": "Bearer " + register(geo_http, "h-dev", "h-next")}
        enqueue(redis_sync, queued)
        d = settled(client, queued)
        assert (d["status"], d["reason"], d["attempts"]) == ("suppressed", "device_changed_owner", 0)
        assert len(sink.received) == 1
        # nor does the new owner see (or open) what was sent to the previous one on that phone
        assert_problem(client.get(f"/v1/deliveries/{sent['delivery_id']}", headers=new_owner), 403, "owner")
        assert_problem(client.post(f"/v1/deliveries/{sent['delivery_id']}/opened", headers=new_owner), 403,
                       "previous owner")


def test_retry_after_is_honoured_then_sent(redis_url, redis_sync, geo_http, geo_url):
    register(geo_http, "r-dev", "r-cust")
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        sink.script += [(503, {"Retry-After": "2"}, 0.0), (429, {"Retry-After": "1"}, 0.0)]
        job = make_job("r-cust", "r-dev", platform="web")
        enqueue(redis_sync, job)
        d = settled(client, job, 15)
        assert d["status"] == "sent" and d["attempts"] == 3
        times = [r["at"] for r in sink.received]
        assert len(times) == 3
        assert times[1] - times[0] >= 2.0 and times[2] - times[1] >= 1.0  # never sooner than Retry-After
        assert [h["status"] for h in d["history"]] == ["queued", "queued", "queued", "sent"]
        assert "503" in d["history"][1]["reason"]


def test_dead_token_is_removed_from_the_device_and_not_used_again(redis_url, redis_sync, geo_http, geo_url):
    register(geo_http, "t-dev", "t-cust")
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        sink.script.append((410, {}, 0.0))
        first = make_job("t-cust", "t-dev", platform="web")
        enqueue(redis_sync, first)
        d = settled(client, first)
        assert d["status"] == "token_invalid" and "410" in d["reason"]
        reg_key = [k for k in redis_sync.keys("vicino:*:device:t-dev:registration")][0]
        wait_until(lambda: redis_sync.hget(reg_key, "push_token") == b"", 10, what="token removed at geo")
        second = make_job("t-cust", "t-dev", platform="web")
        enqueue(redis_sync, second)
        s = settled(client, second)
        assert (s["status"], s["reason"]) == ("suppressed", "no_push_token")
        assert len(sink.received) == 1
        # a fresh registration brings a fresh token: pushes flow again
        register(geo_http, "t-dev", "t-cust", push_token="fresh-token")
        third = make_job("t-cust", "t-dev", platform="web", push_token="ptok-t-dev")
        enqueue(redis_sync, third)
        assert settled(client, third)["status"] == "sent"
        assert orjson.loads(sink.received[-1]["body"])["push_token"] == "fresh-token"


def test_a_rejected_message_fails_into_the_dead_letters_and_a_malformed_entry_too(redis_url, redis_sync, geo_http,
                                                                                   geo_url):
    register(geo_http, "f-dev", "f-cust")
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        sink.script.append((400, {}, 0.0))
        job = make_job("f-cust", "f-dev", platform="web")
        stream = push_jobs_stream_key(customer_shard("f-cust", 16))
        redis_sync.xadd(stream, {"v": "1", "data": b"{not json"})
        redis_sync.xadd(stream, {"v": "1", "data": orjson.dumps({"schema": "vicino.push_job", "version": 1})})
        enqueue(redis_sync, job)
        d = settled(client, job)
        assert d["status"] == "failed" and "400" in d["reason"]
        wait_until(lambda: len(dead(redis_sync, "f-cust")) == 3, 10, what="three dead letters")
        reasons = [x["dead_reason"] for x in dead(redis_sync, "f-cust")]
        assert sum("not a push job v1" in r for r in reasons) == 2 and any("400" in r for r in reasons)
        wait_until(lambda: pending(redis_sync, "f-cust") == 0, 10, what="everything acknowledged")


def test_unreachable_and_slow_providers_end_in_a_recorded_status(redis_url, redis_sync, geo_http, geo_url):
    register(geo_http, "s-dev", "s-cust")
    with webhook_sink() as sink:
        sink.script += [(200, {}, 3.0)] * 3
        cfg = push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET, provider_timeout_s=0.3,
                            max_attempts=2, retry_base_s=0.2)
        with gateway(cfg, geo_url) as client:
            slow = make_job("s-cust", "s-dev", platform="web")
            enqueue(redis_sync, slow)
            d = settled(client, slow, 20)
            assert d["status"] == "failed" and "timeout" in d["reason"] and d["attempts"] == 2
    closed_port = "http://127.0.0.1:9/hook"  # discard port: nothing listens on loopback
    with gateway(push_settings(redis_url, webhook_url=closed_port, webhook_secret=SECRET, max_attempts=2,
                               retry_base_s=0.2), geo_url) as client:
        refused = make_job("s-cust", "s-dev", platform="web")
        enqueue(redis_sync, refused)
        d = settled(client, refused, 20)
        assert d["status"] == "failed" and "unreachable" in d["reason"]
        assert any("unreachable" in x["dead_reason"] for x in dead(redis_sync, "s-cust"))


def test_the_log_provider_is_the_fallback(redis_url, redis_sync, geo_http, geo_url, capfd):
    apns_token = "1d" * 32
    register(geo_http, "l-dev", "l-cust", platform="ios", push_token=apns_token)
    with gateway(push_settings(redis_url), geo_url) as client:
        job = make_job("l-cust", "l-dev", platform="ios")
        enqueue(redis_sync, job)
        d = settled(client, job)
        assert d["status"] == "sent" and d["provider"] == "log"
    out = capfd.readouterr().out
    assert '"title":"An offer near you"' in out and apns_token not in out


def test_receipts_api_refuses_bad_input_and_strangers(redis_url, redis_sync, geo_http, geo_url):
    token = register(geo_http, "a-dev", "a-cust")
    other = register(geo_http, "b-dev", "b-cust")
    with gateway(push_settings(redis_url), geo_url) as client:
        job = make_job("a-cust", "a-dev", platform="web")
        enqueue(redis_sync, job)
        did = settled(client, job)["delivery_id"]
        assert client.get(f"/v1/deliveries/{did}", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert_problem(client.get(f"/v1/deliveries/{did}"), 401)
        assert_problem(client.get("/v1/deliveries/dlv001" + "0" * 24), 401)  # existence is not told
        assert_problem(client.get(f"/v1/deliveries/{did}", headers={"Authorization": f"Bearer {other}"}), 403)
        assert_problem(client.get("/v1/deliveries/not-an-id", headers=ADMIN), 422)
        assert_problem(client.get("/v1/deliveries/dlv001" + "0" * 24, headers=ADMIN), 404, "no delivery")
        assert_problem(client.get("/v1/deliveries", headers=ADMIN), 422, "exactly one")
        assert_problem(client.get("/v1/deliveries", params={"customer_id": "a", "device_id": "b"}, headers=ADMIN),
                       422)
        assert_problem(client.get("/v1/deliveries", params={"device_id": "nobody"}, headers=ADMIN), 404)
        assert_problem(client.get("/v1/deliveries", params={"customer_id": "a-cust"},
                                  headers={"Authorization": f"Bearer {token}"}), 403)
        assert_problem(client.post(f"/v1/deliveries/{did}/opened", headers=ADMIN), 403, "recipient")
        assert_problem(client.post(f"/v1/deliveries/{did}/opened", headers={"Authorization": f"Bearer {other}"}),
                       403)


def test_an_open_becomes_an_offer_open_interaction_once(redis_url, redis_sync, geo_http, geo_url, tmp_path):
    from tests.support import served_service

    token = register(geo_http, "o-dev", "o-cust")
    me = {"Authorization": f"Bearer {token}"}
    with served_service("recommender", redis_url, tmp_path, env={"VICINO_GEO_URL": geo_url,
                                                                 "VICINO_HISTORY_DIR": str(tmp_path / "h")}) as rec_url, \
            gateway(push_settings(redis_url), geo_url, rec_url) as client:
        job = make_job("o-cust", "o-dev", platform="web", offer_id="offer-42", store_id="store-9")
        expired = make_job("o-cust", "o-dev", platform="web", created_at=time.time() - 2000)
        enqueue(redis_sync, job)
        enqueue(redis_sync, expired)
        did = settled(client, job)["delivery_id"]
        not_sent = settled(client, expired)["delivery_id"]
        first = client.post(f"/v1/deliveries/{did}/opened", headers=me)
        assert first.status_code == 200, first.text
        again = client.post(f"/v1/deliveries/{did}/opened", headers=me)
        assert again.status_code == 200 and again.json()["opened_at"] == first.json()["opened_at"]
        assert abs(epoch(first.json()["opened_at"]) - time.time()) < 30
        assert [h["status"] for h in again.json()["history"]] == ["queued", "sent", "opened"]
        assert_problem(client.post(f"/v1/deliveries/{not_sent}/opened", headers=me), 409, "expired")
        history = httpx.get(f"{rec_url}/v1/customers/o-cust/history", headers=ADMIN).json()
        opens = [i for i in history["interactions"] if i["type"] == "offer_open"]
        assert len(opens) == 1 and opens[0]["channel"] == "push" and opens[0]["offer_id"] == "offer-42"
        assert opens[0]["store_id"] == "store-9"
        assert [r.status for r in receipts(redis_sync, "o-cust") if r.delivery_id == did] == ["queued", "sent",
                                                                                               "opened"]
    # the recommender away: the open is kept and the app's retry records the interaction
    job2 = make_job("o-cust", "o-dev", platform="web")
    with gateway(push_settings(redis_url), geo_url, "http://127.0.0.1:9") as client:
        enqueue(redis_sync, job2)
        did2 = settled(client, job2)["delivery_id"]
        assert_problem(client.post(f"/v1/deliveries/{did2}/opened", headers=me), 503, "recommender")
        assert client.get(f"/v1/deliveries/{did2}", headers=me).json()["opened_at"] is not None


def test_erasure_removes_the_deliveries_receipts_and_dead_jobs(redis_url, redis_sync, geo_http, geo_url, rec_client):
    from tests.support import redis_dump

    register(geo_http, "zp-dev", "zp-cust")
    register(geo_http, "keep-dev", "keep-cust")
    with webhook_sink() as sink, gateway(push_settings(redis_url, webhook_url=sink.url, webhook_secret=SECRET),
                                         geo_url) as client:
        sink.script.append((400, {}, 0.0))  # the first one fails into the dead letters
        jobs = [make_job("zp-cust", "zp-dev", platform="web") for _ in range(2)]
        keep = make_job("keep-cust", "keep-dev", platform="web")
        for j in jobs:
            enqueue(redis_sync, j)
        ids = [settled(client, j)["delivery_id"] for j in jobs]
        assert {settled(client, j)["status"] for j in jobs} == {"failed", "sent"}
        enqueue(redis_sync, keep)
        settled(client, keep)
        r = rec_client.delete("/v1/customers/zp-cust", headers=ADMIN)
        assert r.status_code == 200, r.text
        dump = repr(redis_dump(redis_sync))
        for needle in ["zp-cust", "zp-dev", *ids, *(j.data.visit_id for j in jobs)]:
            assert needle not in dump, f"{needle} survived the erasure"
        assert "keep-cust" in dump
        assert_problem(client.get(f"/v1/deliveries/{ids[0]}", headers=ADMIN), 404)
