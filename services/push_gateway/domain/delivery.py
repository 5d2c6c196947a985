"""A delivery's life, as pure functions of its record, the clock and what was observed.

A delivery is created `queued` from its job (one per idempotency key), is marked `sending` just
before the provider is called, and ends `sent`, `failed`, `expired`, `token_invalid` or
`suppressed`. A campaign's test send (`test`) goes through the same steps, except that it is
never suppressed because its visit ended: it has no real visit. The `sending` mark is what makes a push go out at most once: a worker that finds
a delivery `sending` past its lease knows that another worker died mid-send and cannot know
whether the provider got the message, so it records `sent` (unconfirmed) and never resends.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import orjson

from vicino.services.kernel.contracts.push_jobs import PushJobV1

from .outcomes import Delivered, GiveUp, ProviderOutcome, RetryLater, TokenInvalid
from .retry_policy import RetryPolicy, next_attempt

TERMINAL = frozenset({"sent", "failed", "expired", "token_invalid", "suppressed"})
SENDING_POLL_S = 0.5
HISTORY_LIMIT = 50  # status changes kept per delivery (retries could add many)


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str
    job_id: str
    idempotency_key: str
    customer_id: str
    device_id: str
    platform: str
    store_id: str
    offer_id: str
    visit_id: str
    decision_id: str
    created_at: float
    expires_at: float
    campaign_id: str | None = None    # the campaign that sent it (None: none, or before campaigns)
    test: bool = False                # a campaign's test send: its receipts say so, the KPIs skip them
    status: str = "queued"
    reason: str | None = None
    provider: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    sending_until: float = 0.0
    confirmed: bool = True            # False: recorded sent after a worker died mid-send
    token_cleanup_pending: bool = False
    refused_token_sha256: str | None = None   # the token a provider declared dead, for its removal
    opened_at: float | None = None
    rev: int = 0                      # bumped on every change: writes are compare-and-set on it
    history: tuple[dict, ...] = field(default_factory=tuple)

    @classmethod
    def from_job(cls, job: PushJobV1, delivery_id: str, now: float) -> "DeliveryRecord":
        return cls(delivery_id=delivery_id, job_id=job.job_id, idempotency_key=job.idempotency_key,
                   customer_id=job.customer_id, device_id=job.device_id, platform=job.platform,
                   store_id=job.data.store_id, offer_id=job.data.offer_id, visit_id=job.data.visit_id,
                   decision_id=job.data.decision_id, created_at=job.created_at, expires_at=job.expires_at,
                   campaign_id=job.data.campaign_id, test=job.data.test, history=({"status": "queued", "at": now},))

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively (50× asdict + dumps)

    @classmethod
    def from_json(cls, raw: bytes | str) -> "DeliveryRecord":
        d = orjson.loads(raw)
        d["history"] = tuple(d.get("history") or ())
        return cls(**d)

    def public(self) -> dict:
        """What the receipts API shows (no push token is ever stored here)."""
        d = asdict(self)
        for internal in ("rev", "sending_until", "token_cleanup_pending", "refused_token_sha256", "idempotency_key"):
            d.pop(internal)
        d["history"] = list(self.history)
        return d


# --- what to do with a delivery now -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Done:
    """Nothing left to do: acknowledge the job."""


@dataclass(frozen=True, slots=True)
class RevokeToken:
    """The token was declared invalid; the device still has to be told (the geo service)."""


@dataclass(frozen=True, slots=True)
class Close:
    status: str
    reason: str
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Send:
    pass


Step = Done | RevokeToken | Close | Wait | Send


def next_step(rec: DeliveryRecord, now: float, visit_ended: bool) -> Step:
    if rec.status in TERMINAL:
        return RevokeToken() if rec.token_cleanup_pending else Done()
    if rec.status == "sending":
        if now < rec.sending_until:
            # another worker is in the middle of the send: look again soon (it usually ends in ms)
            return Wait(min(rec.sending_until - now, SENDING_POLL_S))
        return Close("sent", "outcome unknown: a worker stopped during the send; not resent (at most once)",
                     confirmed=False)
    if now >= rec.expires_at:
        return Close("expired", "the push expired before it could be sent")
    if visit_ended and not rec.test:  # a test send's visit id names no visit: nothing can end it
        return Close("suppressed", "visit_ended")
    if rec.next_attempt_at > now:
        return Wait(rec.next_attempt_at - now)
    return Send()


def recipient_token(registration: dict | None, marketing_consent: bool, *,
                    owner_is_job_customer: bool) -> str | Close:
    """The push token to send to, or why not to send. The device's current registration wins over
    the token copied into the job: an app that re-registered with a new token gets the push there.
    `owner_is_job_customer`: the registration still names the job's customer (or one merged into
    it); a phone re-registered to someone else since must not get the previous owner's offer."""
    if registration is None:
        return Close("suppressed", "device_unregistered")
    if not owner_is_job_customer:
        return Close("suppressed", "device_changed_owner")
    if not marketing_consent:
        return Close("suppressed", "no_marketing_consent")
    token = registration.get("push_token") or ""
    if not token:  # removed after a provider declared it invalid
        return Close("suppressed", "no_push_token")
    return token


# --- recording what happened --------------------------------------------------------------------

def _with_status(rec: DeliveryRecord, status: str, now: float, reason: str | None, **changes) -> DeliveryRecord:
    entry = {"status": status, "at": now}
    if reason:
        entry["reason"] = reason
    if changes.get("attempts", rec.attempts):
        entry["attempt"] = changes.get("attempts", rec.attempts)
    history = (rec.history + (entry,))[-HISTORY_LIMIT:]
    return replace(rec, status=status, reason=reason, history=history, rev=rec.rev + 1, **changes)


def closed(rec: DeliveryRecord, close: Close, now: float) -> DeliveryRecord:
    reason = None if close.status == "sent" and close.confirmed else close.reason
    return _with_status(rec, close.status, now, reason, confirmed=close.confirmed, sending_until=0.0)


def sending(rec: DeliveryRecord, provider: str, now: float, lease_s: float) -> DeliveryRecord:
    """Marked before the provider is called; `lease_s` covers the longest call."""
    return replace(rec, status="sending", provider=provider, attempts=rec.attempts + 1,
                   sending_until=now + lease_s, rev=rec.rev + 1)


@dataclass(frozen=True, slots=True)
class AfterSend:
    record: DeliveryRecord
    dead_letter: str | None = None   # why the job goes to the dead-letter stream
    alert: bool = False              # the provider refused our credentials: an operator must look


def after_send(rec: DeliveryRecord, outcome: ProviderOutcome, policy: RetryPolicy, now: float,
               draw: float) -> AfterSend:
    """`rec` is the record as marked `sending`; `draw` is uniform in [0, 1) (the jitter)."""
    if isinstance(outcome, Delivered):
        return AfterSend(_with_status(rec, "sent", now, None, sending_until=0.0))
    if isinstance(outcome, TokenInvalid):
        return AfterSend(_with_status(rec, "token_invalid", now, outcome.reason, sending_until=0.0,
                                      token_cleanup_pending=True))
    if isinstance(outcome, GiveUp):
        return AfterSend(_with_status(rec, "failed", now, outcome.reason, sending_until=0.0),
                         dead_letter=outcome.reason)
    assert isinstance(outcome, RetryLater)
    verdict = next_attempt(policy, rec.attempts, outcome.retry_after_s, now, rec.expires_at, draw)
    alert = outcome.reason.startswith("auth:")
    if verdict.at is not None:
        return AfterSend(_with_status(rec, "queued", now, f"{outcome.reason}; {verdict.reason}",
                                      next_attempt_at=verdict.at, sending_until=0.0), alert=alert)
    status = verdict.give_up_status or "failed"
    return AfterSend(_with_status(rec, status, now, f"{outcome.reason}; {verdict.reason}", sending_until=0.0),
                     dead_letter=f"{outcome.reason}; {verdict.reason}" if status == "failed" else None, alert=alert)


def token_revoked(rec: DeliveryRecord) -> DeliveryRecord:
    return replace(rec, token_cleanup_pending=False, rev=rec.rev + 1)


def opened(rec: DeliveryRecord, now: float) -> DeliveryRecord:
    history = (rec.history + ({"status": "opened", "at": now},))[-HISTORY_LIMIT:]
    return replace(rec, opened_at=now, history=history, rev=rec.rev + 1)
