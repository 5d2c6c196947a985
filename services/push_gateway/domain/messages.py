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
    data: dict[str, str]     # what the app reads (`push_data`): all strings, as FCM wants
    collapse_key: str        # the visit: a newer notification of a visit (or a retried copy) replaces an older one
    expires_at: float
    image_url: str | None = None   # a rich notification's picture (FCM notification.image, APNs mutable-content)
    deep_link: str | None = None   # also in `data`: what the app opens on a tap
    campaign_id: str | None = None
    test: bool = False             # a campaign's test send


def push_data(job: PushJobV1, delivery_id: str) -> dict[str, str]:
    """The app's data keys. FCM takes string values only (it refuses a null, a number or a
    boolean), so an absent campaign or deep link is an absent key, and a test send is `"1"`;
    APNs and the webhook carry the same keys, so that the app reads one shape everywhere."""
    d = job.data
    out = {"offer_id": d.offer_id, "store_id": d.store_id, "visit_id": d.visit_id, "decision_id": d.decision_id,
           "delivery_id": delivery_id}
    if d.campaign_id:
        out["campaign_id"] = d.campaign_id
    if d.test:
        out["test"] = "1"
    if job.deep_link:
        out["deep_link"] = job.deep_link
    return out


def notification_for(job: PushJobV1, delivery_id: str, token: str) -> Notification:
    return Notification(delivery_id=delivery_id, customer_id=job.customer_id, device_id=job.device_id,
                        platform=job.platform, token=token, title=job.title, body=job.body,
                        data=push_data(job, delivery_id), collapse_key=job.collapse_key, expires_at=job.expires_at,
                        image_url=job.image_url or None, deep_link=job.deep_link or None,
                        campaign_id=job.data.campaign_id, test=job.data.test)


def remaining_ttl_s(n: Notification, now: float) -> int:
    """Whole seconds the message may still wait on the provider (never past the job's expiry)."""
    return max(0, int(n.expires_at - now))


def fcm_message(n: Notification, now: float) -> dict:
    """The body of FCM HTTP v1 `messages:send`. An image goes in the common `notification.image`
    (the device downloads it; FCM's "Send an image in the notification payload")."""
    notification = {"title": n.title, "body": n.body}
    if n.image_url:
        notification["image"] = n.image_url
    return {"message": {
        "token": n.token,
        "notification": notification,
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
    """The `aps` dictionary, and the app's data as custom keys beside it (Apple's payload key
    reference). With an image, `mutable-content: 1` wakes the app's notification service
    extension, which downloads `image_url` and attaches it before the notification is shown."""
    aps = {"alert": {"title": n.title, "body": n.body}, "sound": "default", "thread-id": n.data["store_id"]}
    extra = {}
    if n.image_url:
        aps["mutable-content"] = 1
        extra["image_url"] = n.image_url
    return orjson.dumps({"aps": aps, **n.data, **extra})


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
    (the `Vicino-Timestamp` header of the signature stays integer seconds). Unlike FCM's data,
    JSON has types: `campaign_id`, `deep_link` and `image_url` are null when absent, `test` a
    boolean (and `data` carries the app's string keys as FCM and APNs do)."""
    return orjson.dumps({"delivery_id": n.delivery_id, "customer_id": n.customer_id, "device_id": n.device_id,
                         "platform": n.platform, "push_token": n.token, "title": n.title, "body": n.body,
                         "deep_link": n.deep_link, "image_url": n.image_url, "campaign_id": n.campaign_id,
                         "test": n.test,
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
