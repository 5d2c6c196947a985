"""One contract for every implementation of the push-provider port (`PushProvider.send(n, attempt)
-> ProviderOutcome`): the same tests run over FCM, APNs, the webhook and the log provider, each
built as the gateway builds it and pointed at a real local server (the FCM and APNs stand-ins of
testbed/push_servers; a signature-checking HTTP/1.1 webhook receiver started here; an in-memory
stream for the log provider). A test needing a remote side runs only over the providers that
have the capability, from the explicit table `CAPABILITIES`: nothing is skipped silently."""
from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import httpx
import orjson
import pytest

from vicino.services.push_gateway.adapters.providers.apns import ApnsKey, ApnsProvider
from vicino.services.push_gateway.adapters.providers.fcm import FcmProvider, ServiceAccount
from vicino.services.push_gateway.adapters.providers.log import LogProvider
from vicino.services.push_gateway.adapters.providers.webhook import WebhookProvider
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key
from vicino.services.push_gateway.domain.messages import (SIGNATURE_HEADER, TIMESTAMP_HEADER, Notification,
                                                          notification_for, verify_webhook_signature)
from vicino.services.push_gateway.domain.outcomes import Delivered, GiveUp, RetryLater, TokenInvalid
from testbed.push_servers import apns_like, fcm_like, free_port

from tests.push_provider_fixtures import TOPIC, apns, apns_server, fcm, fcm_server, material  # noqa: F401

OUTCOMES = (Delivered, RetryLater, TokenInvalid, GiveUp)
PROVIDERS = ("fcm", "apns", "webhook", "log")
REMOTE = {"dead_token", "throttle", "fault", "reject", "unreachable", "timeout"}
# what each provider can be asked to show; the log provider has no remote side, so it can only deliver
CAPABILITIES: dict[str, frozenset[str]] = {
    "fcm": frozenset({"deliver", "concurrent"} | REMOTE),
    "apns": frozenset({"deliver", "concurrent"} | REMOTE),
    "webhook": frozenset({"deliver", "concurrent"} | REMOTE),
    "log": frozenset({"deliver", "concurrent"}),
}
SCRIPTED = ("ok", "dead_token", "throttle", "fault", "reject")
RETRY_AFTER_S = 2
TIMEOUT_S = 0.3   # the adapters' timeout in these tests
SLOW_S = 1.5      # how long a "not answering" stand-in waits


def having(capability: str) -> list[str]:
    return [p for p in PROVIDERS if capability in CAPABILITIES[p]]


def test_capability_table_is_complete():
    assert set(CAPABILITIES) == set(PROVIDERS)
    assert all({"deliver", "concurrent"} <= caps for caps in CAPABILITIES.values())
    assert {p for p in PROVIDERS if CAPABILITIES[p] >= REMOTE} == {"fcm", "apns", "webhook"}


# --- the webhook receiver -------------------------------------------------------------------------

WEBHOOK_SECRET = "contract-test-secret"


@dataclass
class WebhookReceiver:
    """A retailer's receiver: checks the HMAC signature as `verify_webhook_signature` says, records
    each request, answers from a per-push-token script (then 200)."""

    server: ThreadingHTTPServer | None = None
    received: list[dict] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def script(self, token: str, status: int, headers: dict | None = None, delay_s: float = 0.0) -> None:
        with self.lock:
            self.scripts.setdefault(token, []).append((status, dict(headers or {}), delay_s))

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.scripts.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


@pytest.fixture(scope="module")
def webhook_server():
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            signed = verify_webhook_signature(WEBHOOK_SECRET, self.headers.get(TIMESTAMP_HEADER, ""), body,
                                              self.headers.get(SIGNATURE_HEADER, ""), time.time())
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                doc = None
            token = doc.get("push_token") if isinstance(doc, dict) else None
            with receiver.lock:
                receiver.received.append({"json": doc, "token": token, "signed": signed,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                queue = receiver.scripts.get(token) if signed else None
                status, headers, delay = queue.pop(0) if queue else ((200, {}, 0.0) if signed else (401, {}, 0.0))
            if delay:
                time.sleep(delay)
            out = orjson.dumps({"ok": status < 300} if status != 400 else {"error": "invalid payload"})
            with contextlib.suppress(OSError):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                if status < 300:
                    self.send_header("X-Message-Id", f"wh-{uuid.uuid4().hex[:12]}")
                self.end_headers()
                self.wfile.write(out)

    receiver.server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join(5)


# --- one harness per provider -----------------------------------------------------------------------

@dataclass
class Harness:
    """The adapter under test, its stand-in, and the provider-neutral questions the contract asks."""

    name: str
    make_token: Callable[[int], str]
    scripts: dict[str, tuple[Callable[[str], None], ...]]   # kind -> its variants, each script(token)
    build: Callable[..., Any]                           # async context manager -> adapter
    received: Callable[[], list[dict]]                  # {"token", "title", "body", "delivery_id"}
    unreachable_endpoint: str | None = None

    def script(self, kind: str, token: str, variant: int = 0) -> None:
        self.scripts[kind][variant](token)

    def variants(self, *kinds: str) -> list[tuple[str, int]]:
        return [(k, i) for k in kinds if k in self.scripts for i in range(len(self.scripts[k]))]


def _notification(h: Harness, seed: int, token: str | None = None) -> Notification:
    delivery_id = f"dl-{h.name}-{seed}-{uuid.uuid4().hex[:8]}"
    return Notification(
        delivery_id=delivery_id, customer_id=f"cust-{seed}", device_id=f"dev-{seed}",
        platform="ios" if h.name == "apns" else "android", token=token or h.make_token(seed),
        title=f"Offer {seed} near you", body=f"20% off at store {seed}, today only",
        data={"offer_id": f"of-{seed}", "store_id": f"st-{seed}", "visit_id": f"vi-{seed}",
              "decision_id": f"de-{seed}", "delivery_id": delivery_id},
        collapse_key=f"vi-{seed}", expires_at=time.time() + 600)


def _fcm_harness(server) -> Harness:
    def received():
        return [{"token": r.token, "title": r.json["message"]["notification"]["title"],
                 "body": r.json["message"]["notification"]["body"],
                 "delivery_id": r.json["message"]["data"]["delivery_id"], "data": r.json["message"]["data"],
                 "image": r.json["message"]["notification"].get("image")}
                for r in server.received if r.path.endswith("messages:send") and isinstance(r.json, dict)]

    @contextlib.asynccontextmanager
    async def build(timeout_s: float = 5.0, endpoint: str | None = None):
        async with httpx.AsyncClient() as http:
            yield FcmProvider(ServiceAccount.load(str(server.sa.path)), http, endpoint=endpoint or server.url,
                              timeout_s=timeout_s)

    s = server.script
    return Harness("fcm", fcm_like.registration_token, {
        "ok": (lambda t: s(t, fcm_like.ok()),),
        "dead_token": (lambda t: s(t, fcm_like.unregistered()), lambda t: s(t, fcm_like.invalid_token()),
                       lambda t: s(t, fcm_like.sender_id_mismatch())),
        "throttle": (lambda t: s(t, fcm_like.quota_exceeded(retry_after=RETRY_AFTER_S)),
                     lambda t: s(t, fcm_like.unavailable(retry_after=RETRY_AFTER_S))),
        "fault": (lambda t: s(t, fcm_like.internal()), lambda t: s(t, fcm_like.unavailable()),
                  lambda t: s(t, fcm_like.malformed(status=500))),
        "reject": (lambda t: s(t, fcm_like.invalid_argument("Invalid value at 'message.android.ttl'")),
                   lambda t: s(t, fcm_like.invalid_argument("Message is too big"))),
        "timeout": (lambda t: s(t, fcm_like.slow(SLOW_S)),),
    }, build, received, f"http://127.0.0.1:{free_port()}")


def _apns_harness(server, keys) -> Harness:
    def received():
        return [{"token": r.token, "title": r.json["aps"]["alert"]["title"], "body": r.json["aps"]["alert"]["body"],
                 "delivery_id": r.json["delivery_id"],
                 "data": {k: v for k, v in r.json.items() if k not in ("aps", "image_url")},
                 # the app's notification service extension fetches the image: only with mutable-content
                 "image": r.json.get("image_url") if r.json["aps"].get("mutable-content") == 1 else None}
                for r in server.received if isinstance(r.json, dict) and "aps" in r.json]

    key = keys["apns_key"]

    @contextlib.asynccontextmanager
    async def build(timeout_s: float = 5.0, endpoint: str | None = None):
        async with httpx.AsyncClient(http2=True, verify=keys["tls"].client_context()) as http:
            yield ApnsProvider(ApnsKey.load(str(key.path), key.key_id, key.team_id), TOPIC, http,
                               endpoint=endpoint or server.url, timeout_s=timeout_s)

    s = server.script
    return Harness("apns", apns_like.device_token, {
        "ok": (lambda t: s(t, apns_like.ok()),),
        "dead_token": (lambda t: s(t, apns_like.unregistered()), lambda t: s(t, apns_like.bad_device_token()),
                       lambda t: s(t, apns_like.expired_token()),
                       lambda t: s(t, apns_like.device_token_not_for_topic())),
        "throttle": (lambda t: s(t, apns_like.too_many_requests(retry_after=RETRY_AFTER_S)),),
        "fault": (lambda t: s(t, apns_like.internal()), lambda t: s(t, apns_like.unavailable()),
                  lambda t: s(t, apns_like.shutdown()), lambda t: s(t, apns_like.malformed(500))),
        "reject": (lambda t: s(t, apns_like.apns_error(400, "BadCollapseId")),
                   lambda t: s(t, apns_like.apns_error(413, "PayloadTooLarge"))),
        "timeout": (lambda t: s(t, apns_like.slow(SLOW_S)),),
    }, build, received, f"https://127.0.0.1:{free_port()}")


def _webhook_harness(receiver: WebhookReceiver) -> Harness:
    def received():
        with receiver.lock:
            records = list(receiver.received)
        assert all(r["signed"] for r in records), "the receiver got a request with a bad signature"
        return [{"token": r["token"], "title": r["json"]["title"], "body": r["json"]["body"],
                 "delivery_id": r["json"]["delivery_id"], "data": r["json"]["data"], "image": r["json"]["image_url"]}
                for r in records]

    @contextlib.asynccontextmanager
    async def build(timeout_s: float = 5.0, endpoint: str | None = None):
        async with httpx.AsyncClient() as http:
            yield WebhookProvider(endpoint or receiver.url, WEBHOOK_SECRET, http, timeout_s=timeout_s)

    s = receiver.script
    return Harness("webhook", lambda seed: f"wh-token-{seed}-{uuid.uuid4().hex}", {
        "ok": (lambda t: s(t, 200),),
        "dead_token": (lambda t: s(t, 410),),
        "throttle": (lambda t: s(t, 429, {"Retry-After": str(RETRY_AFTER_S)}),
                     lambda t: s(t, 503, {"Retry-After": str(RETRY_AFTER_S)})),
        "fault": (lambda t: s(t, 500), lambda t: s(t, 502), lambda t: s(t, 503)),
        "reject": (lambda t: s(t, 400), lambda t: s(t, 422)),
        "timeout": (lambda t: s(t, 200, delay_s=SLOW_S),),
    }, build, received, f"http://127.0.0.1:{free_port()}/hook")


def _log_harness() -> Harness:
    stream = io.StringIO()

    def received():
        return [{"token": None, "title": d["push"]["title"], "body": d["push"]["body"],
                 "delivery_id": d["push"]["delivery_id"], "data": d["push"]["data"], "image": d["push"]["image_url"],
                 "line": line}
                for line in stream.getvalue().splitlines() if (d := orjson.loads(line))]

    @contextlib.asynccontextmanager
    async def build(timeout_s: float = 5.0, endpoint: str | None = None):
        yield LogProvider(stream)

    return Harness("log", lambda seed: f"log-token-{seed}-{uuid.uuid4().hex}", {"ok": (lambda t: None,)},
                   build, received)


@pytest.fixture(params=PROVIDERS)
def provider(request) -> Harness:
    return _harness(request, request.param)


def _harness(request, name: str) -> Harness:
    if name == "fcm":
        return _fcm_harness(request.getfixturevalue("fcm"))
    if name == "apns":
        return _apns_harness(request.getfixturevalue("apns"), request.getfixturevalue("material"))
    if name == "webhook":
        receiver = request.getfixturevalue("webhook_server")
        receiver.reset()
        return _webhook_harness(receiver)
    return _log_harness()


def for_providers_with(capability: str):
    """A `provider` fixture over only the providers having `capability` (see CAPABILITIES)."""
    return pytest.mark.parametrize("provider", having(capability), indirect=True)


async def _send(h: Harness, n: Notification, **build_kw):
    async with h.build(**build_kw) as adapter:
        return await adapter.send(n, 1)


def send(h: Harness, n: Notification, **build_kw):
    return asyncio.run(_send(h, n, **build_kw))


def _assert_closed_set(outcome) -> None:
    assert isinstance(outcome, OUTCOMES), f"{type(outcome).__name__} is not a ProviderOutcome"


def _assert_private(outcome, token: str) -> None:
    text = getattr(outcome, "reason", None) or getattr(outcome, "provider_message_id", None) or ""
    assert token not in text, f"the push token leaked into {outcome!r}"
    # also no recognisable piece of it (a truncated token is still a token)
    assert token[:24] not in text, f"part of the push token leaked into {outcome!r}"


# --- the contract ---------------------------------------------------------------------------------

@for_providers_with("deliver")
def test_well_formed_notification_is_delivered_and_received_once(provider):
    n = _notification(provider, 1)
    outcome = send(provider, n)
    assert isinstance(outcome, Delivered)
    got = provider.received()
    assert len(got) == 1, got
    assert (got[0]["title"], got[0]["body"], got[0]["delivery_id"]) == (n.title, n.body, n.delivery_id)
    if provider.name == "log":
        assert n.token not in got[0]["line"]  # the log provider never prints the push token
    else:
        assert got[0]["token"] == n.token


@for_providers_with("deliver")
def test_a_campaigns_test_send_arrives_with_its_campaign_test_mark_deep_link_and_image(provider):
    """What the app reads is the same on every channel: string data keys (the FCM stand-in refuses
    any other value, as FCM does) and the image where each platform shows it."""
    visit = f"vi-{uuid.uuid4().hex[:8]}"
    now = time.time()
    job = PushJobV1(job_id="job-t", idempotency_key=idempotency_key("cust-7", "st-7", visit), customer_id="cust-7",
                    device_id="dev-7", platform="ios" if provider.name == "apns" else "android",
                    push_token=provider.make_token(7), title="Prova", body="Il 20% da Vicino, solo oggi",
                    deep_link="vicino://offers/of-7", image_url="https://cdn.example.com/of-7.jpg",
                    data=PushDataV1(offer_id="of-7", store_id="st-7", visit_id=visit, decision_id="test-7",
                                    campaign_id="spring-it", test=True),
                    collapse_key=visit, created_at=now, expires_at=now + 600)
    n = notification_for(job, f"dl-{provider.name}-t-{uuid.uuid4().hex[:8]}", job.push_token)
    assert isinstance(send(provider, n), Delivered)
    (got,) = provider.received()
    assert got["data"] == {"offer_id": "of-7", "store_id": "st-7", "visit_id": visit, "decision_id": "test-7",
                           "delivery_id": n.delivery_id, "campaign_id": "spring-it", "test": "1",
                           "deep_link": "vicino://offers/of-7"}
    assert got["image"] == "https://cdn.example.com/of-7.jpg"


def scripted_outcomes(h: Harness, *kinds: str, seed: int) -> list[tuple[str, int, str, object]]:
    """Every variant of each scripted answer of `kinds`, sent in turn through one adapter:
    [(kind, variant, push token, outcome)]."""
    cases = h.variants(*kinds)

    async def run():
        results = []
        async with h.build() as adapter:
            for j, (kind, i) in enumerate(cases):
                n = _notification(h, seed + j)
                h.script(kind, n.token, i)
                results.append((kind, i, n.token, await adapter.send(n, 1)))
        return results

    results = asyncio.run(run())
    assert results and len(results) == len(cases)
    return results


@for_providers_with("deliver")
def test_every_scripted_answer_is_an_outcome_of_the_closed_set(provider):
    for kind, i, _, outcome in scripted_outcomes(provider, *SCRIPTED, seed=100):
        assert isinstance(outcome, OUTCOMES), f"{kind}[{i}]: {outcome!r} is not a ProviderOutcome"


@for_providers_with("unreachable")
def test_unreachable_provider_is_retry_later(provider):
    n = _notification(provider, 2)
    outcome = send(provider, n, endpoint=provider.unreachable_endpoint, timeout_s=2.0)
    _assert_closed_set(outcome)
    assert isinstance(outcome, RetryLater), outcome
    _assert_private(outcome, n.token)


@for_providers_with("timeout")
def test_a_provider_not_answering_within_the_timeout_is_retry_later(provider):
    n = _notification(provider, 3)
    provider.script("timeout", n.token)
    started = time.monotonic()
    outcome = send(provider, n, timeout_s=TIMEOUT_S)
    assert time.monotonic() - started < SLOW_S, "the adapter waited past its timeout"
    _assert_closed_set(outcome)
    assert isinstance(outcome, RetryLater), outcome
    assert "timeout" in outcome.reason.lower()
    _assert_private(outcome, n.token)


def _only(provider: Harness, kind: str, expected: type, seed: int) -> list:
    results = scripted_outcomes(provider, kind, seed=seed)
    wrong = [(f"{k}[{i}]", o) for k, i, _, o in results if not isinstance(o, expected)]
    assert not wrong, f"expected {expected.__name__}: {wrong}"
    return [o for *_, o in results]


@for_providers_with("dead_token")
def test_a_dead_token_is_token_invalid(provider):
    _only(provider, "dead_token", TokenInvalid, seed=300)


@for_providers_with("throttle")
def test_throttling_is_retry_later_honouring_retry_after(provider):
    for o in _only(provider, "throttle", RetryLater, seed=400):
        assert o.retry_after_s is not None and o.retry_after_s >= RETRY_AFTER_S, o


@for_providers_with("fault")
def test_a_server_fault_is_retry_later(provider):
    _only(provider, "fault", RetryLater, seed=500)


@for_providers_with("reject")
def test_a_rejected_message_is_give_up(provider):
    _only(provider, "reject", GiveUp, seed=600)


@for_providers_with("deliver")
def test_no_outcome_reason_contains_the_push_token(provider):
    for kind, i, token, outcome in scripted_outcomes(provider, *SCRIPTED, seed=700):
        assert isinstance(outcome, OUTCOMES)
        _assert_private(outcome, token)


@for_providers_with("concurrent")
def test_fifty_concurrent_sends_through_one_adapter_are_all_delivered_once(provider):
    notes = [_notification(provider, 1000 + i) for i in range(50)]

    async def run():
        async with provider.build() as adapter:
            return await asyncio.gather(*(adapter.send(n, 1) for n in notes))

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Delivered) for o in outcomes), [o for o in outcomes if not isinstance(o, Delivered)]
    got = sorted(r["delivery_id"] for r in provider.received())
    assert got == sorted(n.delivery_id for n in notes)  # each delivery id received exactly once
