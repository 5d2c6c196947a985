"""What is sent: one provider-neutral notification, and each provider's payload built from it.
Pure: the adapters only move these bytes."""
from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

import orjson

from vicino.services.kernel.contracts.push_jobs import PushJobV1
from vicino.services.kernel.times import rfc3339

MAX_PAYLOAD_BYTES = 4096  # FCM's and APNs's limit on a notification's payload


@dataclass(frozen=True, slots=True)
class Notification:
    delivery_id: str
    customer_id: str
    device_id: str
    platform: str
    token: str
    title: str
    body: str
    data: dict[str, str]     # offer, store, visit, decision and delivery ids: all strings, as FCM wants
    collapse_key: str        # the visit: a newer notification of a visit (or a retried copy) replaces an older one
    expires_at: float


def notification_for(job: PushJobV1, delivery_id: str, token: str) -> Notification:
    return Notification(delivery_id=delivery_id, customer_id=job.customer_id, device_id=job.device_id,
                        platform=job.platform, token=token, title=job.title, body=job.body,
                        data={**job.data.model_dump(), "delivery_id": delivery_id},
                        collapse_key=job.collapse_key, expires_at=job.expires_at)


def remaining_ttl_s(n: Notification, now: float) -> int:
    """Whole seconds the message may still wait on the provider (never past the job's expiry)."""
    return max(0, int(n.expires_at - now))


def fcm_message(n: Notification, now: float) -> dict:
    """The body of FCM HTTP v1 `messages:send`."""
    return {"message": {
        "token": n.token,
        "notification": {"title": n.title, "body": n.body},
        "data": n.data,
        # collapse_key collapses copies still waiting at Google; the notification's tag makes a copy
        # that reaches the device replace the one shown (a retry after a timeout adds nothing)
        "android": {"collapse_key": n.collapse_key, "ttl": f"{remaining_ttl_s(n, now)}s", "priority": "high",
                    "notification": {"tag": n.collapse_key}},
    }}


def fcm_payload_size(message: dict) -> int:
    """What counts against FCM's 4 KiB: the notification and the data, not the envelope."""
    m = message["message"]
    return len(orjson.dumps({"notification": m["notification"], "data": m["data"]}))


def apns_payload(n: Notification) -> bytes:
    return orjson.dumps({"aps": {"alert": {"title": n.title, "body": n.body}, "sound": "default",
                                 "thread-id": n.data["store_id"]},
                         **n.data})


def apns_id(n: Notification) -> str:
    """A UUID derived from the delivery, the same on every attempt: the provider's logs and ours
    name the same message, and a retried copy is recognisably the same one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vicino:{n.delivery_id}"))


def apns_headers(n: Notification, topic: str) -> dict[str, str]:
    """`apns-collapse-id` (the visit) makes the device show one notification for every copy."""
    return {"apns-topic": topic, "apns-push-type": "alert", "apns-priority": "10",
            # APNs stores an undeliverable notification until then, and not after
            "apns-expiration": str(int(n.expires_at)),
            "apns-collapse-id": n.collapse_key[:64], "apns-id": apns_id(n)}


def webhook_body(n: Notification, now: float) -> bytes:
    """The JSON a webhook receives: an outward contract, so its times are RFC 3339 like the API's
    (the `Vicino-Timestamp` header of the signature stays integer seconds)."""
    return orjson.dumps({"delivery_id": n.delivery_id, "customer_id": n.customer_id, "device_id": n.device_id,
                         "platform": n.platform, "push_token": n.token, "title": n.title, "body": n.body,
                         "data": n.data, "collapse_key": n.collapse_key, "expires_at": rfc3339(n.expires_at),
                         "sent_at": rfc3339(now)})


SIGNATURE_HEADER = "Vicino-Signature"
TIMESTAMP_HEADER = "Vicino-Timestamp"


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` + hex HMAC-SHA256 over `<timestamp>.<body>`: the receiver recomputes it with the shared
    secret and refuses a stale timestamp, so a captured request cannot be replayed later."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify_webhook_signature(secret: str, timestamp: str, body: bytes, signature: str, now: float,
                             tolerance_s: float = 300.0) -> bool:
    """What a receiver does (our tests do it too)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(webhook_signature(secret, ts, body), signature)
