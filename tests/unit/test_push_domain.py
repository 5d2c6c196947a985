"""The push gateway's pure core: retry policy, a delivery's steps, payloads, provider error mapping."""
from __future__ import annotations

from dataclasses import replace

import httpx
import orjson
import pytest
from hypothesis import given, strategies as st

from vicino.services.kernel.contracts.deliveries import delivery_id_for, shard_of_delivery
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1
from vicino.services.kernel.times import rfc3339
from vicino.services.push_gateway.adapters.providers.apns import apns_outcome
from vicino.services.push_gateway.adapters.providers.fcm import fcm_outcome
from vicino.services.push_gateway.domain import delivery as d
from vicino.services.push_gateway.domain.messages import (
    MAX_PAYLOAD_BYTES, apns_headers, apns_payload, fcm_message, fcm_payload_size, notification_for,
    verify_webhook_signature, webhook_body, webhook_signature)
from vicino.services.push_gateway.domain.outcomes import Delivered, GiveUp, RetryLater, TokenInvalid
from vicino.services.push_gateway.domain.retry_policy import RetryPolicy, next_attempt, parse_retry_after
from vicino.services.push_gateway.domain.routing import routing_table

T0 = 1_800_000_000.0


def job(**kw) -> PushJobV1:
    base = dict(job_id="job_1", idempotency_key="c1:s1:v1", customer_id="c1", device_id="d1", platform="android",
                push_token="tok", title="Hi", body="An offer", collapse_key="v1", created_at=T0, expires_at=T0 + 900,
                data=PushDataV1(offer_id="o1", store_id="s1", visit_id="v1", decision_id="dec1"))
    return PushJobV1(**{**base, **kw})


def record(**kw) -> d.DeliveryRecord:
    return replace(d.DeliveryRecord.from_job(job(), "dlv001" + "0" * 24, T0), **kw)


# --- retry policy -------------------------------------------------------------------------------

@given(attempts=st.integers(1, 5), draw=st.floats(0, 0.999))
def test_backoff_grows_with_jitter_within_bounds(attempts, draw):
    p = RetryPolicy(max_attempts=6, base_s=1, max_s=300, jitter=0.5)
    v = next_attempt(p, attempts, None, T0, T0 + 10_000, draw)
    ceiling = min(2 ** (attempts - 1), 300)
    assert v.at is not None and ceiling * 0.5 <= v.at - T0 <= ceiling


def test_retry_after_wins_when_longer_and_expiry_and_attempts_stop_retries():
    p = RetryPolicy(max_attempts=3, base_s=1)
    assert next_attempt(p, 1, 42, T0, T0 + 900, 0.0).at == T0 + 42
    assert next_attempt(p, 1, 0.1, T0, T0 + 900, 0.0).at == T0 + 1  # shorter than the backoff: backoff
    v = next_attempt(p, 1, 1000, T0, T0 + 900, 0.0)
    assert v.at is None and v.give_up_status == "expired"
    v = next_attempt(p, 3, None, T0, T0 + 900, 0.0)
    assert v.at is None and v.give_up_status == "failed"


def test_parse_retry_after():
    assert parse_retry_after("120", T0) == 120
    assert parse_retry_after(None, T0) is None and parse_retry_after("soon", T0) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 30) == pytest.approx(30)


# --- a delivery's steps --------------------------------------------------------------------------

def test_next_step_table():
    assert isinstance(d.next_step(record(), T0, False), d.Send)
    assert d.next_step(record(), T0 + 900, False) == d.Close("expired", "the push expired before it could be sent")
    assert d.next_step(record(), T0, True) == d.Close("suppressed", "visit_ended")
    assert d.next_step(record(next_attempt_at=T0 + 5), T0, False) == d.Wait(5)
    assert isinstance(d.next_step(record(status="sent"), T0, False), d.Done)
    assert isinstance(d.next_step(record(status="token_invalid", token_cleanup_pending=True), T0, False),
                      d.RevokeToken)
    # another worker mid-send: wait for its lease; past the lease it died: sent, unconfirmed, never resent
    assert d.next_step(record(status="sending", sending_until=T0 + 3), T0, False) == d.Wait(d.SENDING_POLL_S)
    assert d.next_step(record(status="sending", sending_until=T0 + 0.25), T0, False) == d.Wait(0.25)
    step = d.next_step(record(status="sending", sending_until=T0 - 1), T0, False)
    assert isinstance(step, d.Close) and step.status == "sent" and not step.confirmed


def test_recipient_token():
    mine = {"owner_is_job_customer": True}
    assert d.recipient_token(None, True, **mine) == d.Close("suppressed", "device_unregistered")
    assert d.recipient_token({"push_token": "x"}, False, **mine) == d.Close("suppressed", "no_marketing_consent")
    assert d.recipient_token({"push_token": ""}, True, **mine) == d.Close("suppressed", "no_push_token")
    assert d.recipient_token({"push_token": "new"}, True, **mine) == "new"
    # a phone handed to someone else: the previous owner's offer is not sent to it
    assert d.recipient_token({"push_token": "new"}, True, owner_is_job_customer=False) == \
        d.Close("suppressed", "device_changed_owner")


def test_after_send_maps_every_outcome():
    p = RetryPolicy(max_attempts=2, base_s=1)
    marked = d.sending(record(), "fcm", T0, 25)
    assert marked.status == "sending" and marked.attempts == 1 and marked.rev == 1
    ok = d.after_send(marked, Delivered("m1"), p, T0, 0.0)
    assert ok.record.status == "sent" and ok.dead_letter is None and ok.record.history[-1]["status"] == "sent"
    bad = d.after_send(marked, TokenInvalid("UNREGISTERED"), p, T0, 0.0)
    assert bad.record.status == "token_invalid" and bad.record.token_cleanup_pending
    gone = d.after_send(marked, GiveUp("INVALID_ARGUMENT"), p, T0, 0.0)
    assert gone.record.status == "failed" and gone.dead_letter == "INVALID_ARGUMENT"
    later = d.after_send(marked, RetryLater("fcm 503", 10), p, T0, 0.0)
    assert later.record.status == "queued" and later.record.next_attempt_at == T0 + 10
    spent = d.after_send(d.sending(later.record, "fcm", T0 + 10, 25), RetryLater("fcm 503"), p, T0 + 10, 0.0)
    assert spent.record.status == "failed" and spent.dead_letter
    auth = d.after_send(marked, RetryLater("auth: refused"), p, T0, 0.0)
    assert auth.alert and auth.record.status == "queued"


def test_record_round_trips_and_public_view_hides_internals():
    r = d.after_send(d.sending(record(), "apns", T0, 25), TokenInvalid("x"), RetryPolicy(), T0, 0.0).record
    r = replace(r, refused_token_sha256="ab" * 32)
    assert d.DeliveryRecord.from_json(r.to_json()) == r
    public = r.public()
    assert "refused_token_sha256" not in public and "rev" not in public and public["history"][0]["status"] == "queued"


def test_delivery_id_is_stable_per_idempotency_key_and_names_its_shard():
    a, b = delivery_id_for("c1:s1:v1", 7), delivery_id_for("c1:s1:v2", 7)
    assert a == delivery_id_for("c1:s1:v1", 7) and a != b and shard_of_delivery(a) == 7
    assert shard_of_delivery("nope") is None


# --- payloads ------------------------------------------------------------------------------------

def test_fcm_message_ttl_never_outlives_the_job_and_collapses_per_visit():
    n = notification_for(job(), "dlv", "tok")
    m = fcm_message(n, T0 + 600)["message"]
    # the tag: a copy that reaches the phone (a retry after a timeout) replaces the one shown
    assert m["android"] == {"collapse_key": "v1", "ttl": "300s", "priority": "high", "notification": {"tag": "v1"}}
    # no campaign, no test, no deep link: absent keys (FCM refuses a null or a boolean value)
    assert m["data"] == {"offer_id": "o1", "store_id": "s1", "visit_id": "v1", "decision_id": "dec1", "delivery_id": "dlv"}
    assert all(isinstance(v, str) for v in m["data"].values())
    assert m["notification"] == {"title": "Hi", "body": "An offer"}  # no image: no key
    assert fcm_message(n, T0 + 2000)["message"]["android"]["ttl"] == "0s"


def campaign_job(**kw) -> PushJobV1:
    return job(data=PushDataV1(offer_id="o1", store_id="s1", visit_id="v1", decision_id="dec1", campaign_id="spring",
                               test=True), deep_link="vicino://offers/o1", image_url="https://cdn.example/o1.jpg", **kw)


def test_a_campaigns_push_carries_its_campaign_test_mark_deep_link_and_image_on_every_channel():
    n = notification_for(campaign_job(), "dlv", "tok")
    data = {"offer_id": "o1", "store_id": "s1", "visit_id": "v1", "decision_id": "dec1", "delivery_id": "dlv",
            "campaign_id": "spring", "test": "1", "deep_link": "vicino://offers/o1"}
    m = fcm_message(n, T0)["message"]
    assert m["data"] == data and all(isinstance(v, str) for v in m["data"].values())
    assert m["notification"] == {"title": "Hi", "body": "An offer", "image": "https://cdn.example/o1.jpg"}
    # APNs: the same keys beside `aps`; the image for the app's notification service extension
    p = orjson.loads(apns_payload(n))
    assert p["aps"]["mutable-content"] == 1 and p["image_url"] == "https://cdn.example/o1.jpg"
    assert {k: v for k, v in p.items() if k not in ("aps", "image_url")} == data
    plain = orjson.loads(apns_payload(notification_for(job(), "dlv", "tok")))
    assert "mutable-content" not in plain["aps"] and "image_url" not in plain and "test" not in plain
    # the webhook's JSON has types: a boolean and nulls
    w = orjson.loads(webhook_body(n, T0))
    assert (w["campaign_id"], w["test"], w["deep_link"], w["image_url"]) == (
        "spring", True, "vicino://offers/o1", "https://cdn.example/o1.jpg") and w["data"] == data
    w = orjson.loads(webhook_body(notification_for(job(), "dlv", "tok"), T0))
    assert (w["campaign_id"], w["test"], w["deep_link"], w["image_url"]) == (None, False, None, None)


def test_the_delivery_record_and_its_receipts_carry_the_campaign_and_the_test_mark():
    from vicino.services.push_gateway.adapters.delivery_repository import receipt_of

    rec = d.DeliveryRecord.from_job(campaign_job(), "dlv001" + "0" * 24, T0)
    assert (rec.campaign_id, rec.test) == ("spring", True)
    assert d.DeliveryRecord.from_json(rec.to_json()) == rec
    assert (rec.public()["campaign_id"], rec.public()["test"]) == ("spring", True)
    sent = d.after_send(d.sending(rec, "fcm", T0, 25), Delivered("m"), RetryPolicy(), T0, 0.0).record
    r = receipt_of(sent, T0)
    assert (r.status, r.campaign_id, r.test) == ("sent", "spring", True)
    plain = receipt_of(record(), T0)
    assert (plain.campaign_id, plain.test) == (None, False)
    # a record written before campaigns reads as no campaign, not a test
    old = orjson.loads(record().to_json())
    del old["campaign_id"], old["test"]
    before = d.DeliveryRecord.from_json(orjson.dumps(old))
    assert (before.campaign_id, before.test) == (None, False)


def test_a_test_send_ignores_the_end_of_its_visit_and_nothing_else():
    test = d.DeliveryRecord.from_job(campaign_job(), "dlv001" + "0" * 24, T0)
    assert isinstance(d.next_step(test, T0, True), d.Send)  # its visit id names no visit
    assert d.next_step(test, T0 + 900, True) == d.Close("expired", "the push expired before it could be sent")
    assert d.next_step(record(), T0, True) == d.Close("suppressed", "visit_ended")
    assert d.recipient_token({"push_token": "x"}, False, owner_is_job_customer=True) == \
        d.Close("suppressed", "no_marketing_consent")
    bad = d.after_send(d.sending(test, "fcm", T0, 25), TokenInvalid("UNREGISTERED"), RetryPolicy(), T0, 0.0)
    assert bad.record.status == "token_invalid" and bad.record.token_cleanup_pending


def test_payload_size_limit_is_measured():
    n = notification_for(job(body="x" * 5000), "dlv", "tok")
    assert fcm_payload_size(fcm_message(n, T0)) > MAX_PAYLOAD_BYTES
    assert len(apns_payload(n)) > MAX_PAYLOAD_BYTES


def test_apns_headers():
    h = apns_headers(notification_for(job(), "dlv", "tok"), "com.example.app")
    assert h["apns-push-type"] == "alert" and h["apns-expiration"] == str(int(T0 + 900))
    assert h["apns-collapse-id"] == "v1" and h["apns-topic"] == "com.example.app" and len(h["apns-id"]) == 36


def test_webhook_signature_verifies_and_refuses_tampering_and_replay():
    body = webhook_body(notification_for(job(), "dlv", "tok"), T0)
    sent = orjson.loads(body)  # an outward contract: times as RFC 3339 UTC, like the API's
    assert (sent["sent_at"], sent["expires_at"]) == (rfc3339(T0), rfc3339(T0 + 900)) and sent["sent_at"].endswith("Z")
    sig = webhook_signature("s" * 20, int(T0), body)
    assert verify_webhook_signature("s" * 20, str(int(T0)), body, sig, T0 + 10)
    assert not verify_webhook_signature("s" * 20, str(int(T0)), body + b" ", sig, T0)
    assert not verify_webhook_signature("t" * 20, str(int(T0)), body, sig, T0)
    assert not verify_webhook_signature("s" * 20, str(int(T0)), body, sig, T0 + 3600)


def test_routing_falls_back_to_webhook_then_log():
    assert routing_table(frozenset({"fcm", "apns", "log"})) == {"android": "fcm", "ios": "apns", "web": "log"}
    assert routing_table(frozenset({"fcm", "webhook", "log"})) == {"android": "fcm", "ios": "webhook", "web": "webhook"}
    assert routing_table(frozenset({"log"})) == {"android": "log", "ios": "log", "web": "log"}


# --- provider answers -----------------------------------------------------------------------------

def _fcm_error(code: int, status: str, error_code: str | None = None, message: str = "m", field: str | None = None):
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code or status}]
    if field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": field, "description": message}]})
    import orjson
    return orjson.dumps({"error": {"code": code, "message": message, "status": status, "details": details}})


def test_fcm_error_mapping():
    assert fcm_outcome(200, b'{"name": "projects/p/messages/1"}', None, T0) == Delivered("projects/p/messages/1")
    assert fcm_outcome(200, b"not json", None, T0) == Delivered(None)
    assert isinstance(fcm_outcome(404, _fcm_error(404, "NOT_FOUND", "UNREGISTERED"), None, T0), TokenInvalid)
    invalid_token = _fcm_error(400, "INVALID_ARGUMENT", message="The registration token is not a valid FCM "
                               "registration token", field="message.token")
    assert isinstance(fcm_outcome(400, invalid_token, None, T0), TokenInvalid)
    assert isinstance(fcm_outcome(400, _fcm_error(400, "INVALID_ARGUMENT", message="bad ttl"), None, T0), GiveUp)
    assert fcm_outcome(429, _fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "30", T0).retry_after_s == 30
    assert isinstance(fcm_outcome(503, b"<html>oops</html>", None, T0), RetryLater)
    assert isinstance(fcm_outcome(500, _fcm_error(500, "INTERNAL"), None, T0), RetryLater)
    assert isinstance(fcm_outcome(403, _fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), None, T0),
                      TokenInvalid)
    assert isinstance(fcm_outcome(413, b"", None, T0), GiveUp)


def test_apns_error_mapping():
    h = httpx.Headers({"apns-id": "abc"})
    assert apns_outcome(200, b"", h, T0) == Delivered("abc")
    assert isinstance(apns_outcome(400, b'{"reason": "BadDeviceToken"}', h, T0), TokenInvalid)
    assert isinstance(apns_outcome(410, b'{"reason": "Unregistered", "timestamp": 1}', h, T0), TokenInvalid)
    assert apns_outcome(429, b'{"reason": "TooManyRequests"}', httpx.Headers({"retry-after": "7"}),
                        T0).retry_after_s == 7
    assert isinstance(apns_outcome(503, b"garbage", h, T0), RetryLater)
    assert isinstance(apns_outcome(413, b'{"reason": "PayloadTooLarge"}', h, T0), GiveUp)
    assert isinstance(apns_outcome(400, b'{"reason": "BadCollapseId"}', h, T0), GiveUp)
