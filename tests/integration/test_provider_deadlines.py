"""One overall deadline per provider call, and what a timed-out send promises: the push is retried
under the same collapse identifiers, so that if the provider had accepted the first copy, the
second replaces it on the device instead of adding one. Against the provider stand-ins and a
local server that trickles its answer."""
from __future__ import annotations

import asyncio
import time

import httpx

from vicino.services.push_gateway.adapters.providers.fcm import FcmProvider, ServiceAccount
from vicino.services.push_gateway.adapters.providers.webhook import WebhookProvider
from vicino.services.push_gateway.domain.messages import Notification
from vicino.services.push_gateway.domain.outcomes import Delivered, RetryLater
from tests.integration._push_support import enqueue, make_job
from tests.integration.test_push_gateway import register, settled
from tests.integration.test_push_providers import gateway
from testbed.push_servers import apns_like, fcm_like

from tests.push_provider_fixtures import apns, apns_server, fcm, fcm_server, material  # noqa: E402,F401

SECRET = "webhook-secret-0123456789"


def _notification(token: str, platform: str = "web") -> Notification:
    return Notification(delivery_id="dlv_deadline", customer_id="c1", device_id="d1", platform=platform,
                        token=token, title="t", body="b",
                        data={"store_id": "s1", "visit_id": "v1", "delivery_id": "dlv_deadline"},
                        collapse_key="v1", expires_at=time.time() + 600)


async def _trickling_server(chunks: int, every_s: float):
    """HTTP/1.1 on 127.0.0.1 that answers 200 at once, then its body one byte every `every_s`:
    each read is quick, the whole answer is not."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % chunks)
            for _ in range(chunks):
                await writer.drain()
                await asyncio.sleep(every_s)
                writer.write(b".")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_trickled_answer_is_cut_at_the_deadline():
    """httpx's timeout (0.5 s per read) never trips on a byte every 0.1 s; the deadline does."""
    async def go():
        server, port = await _trickling_server(chunks=60, every_s=0.1)  # 6 s in all
        async with server, httpx.AsyncClient() as http:
            provider = WebhookProvider(f"http://127.0.0.1:{port}/hook", SECRET, http, timeout_s=0.5)
            return await provider.send(_notification("web-token-1"), 1)

    outcome = asyncio.run(go())
    assert isinstance(outcome, RetryLater), outcome
    assert "DeadlineExceeded" in outcome.reason and "outcome unknown" in outcome.reason


def test_a_slow_oauth_token_exchange_is_cut_at_the_deadline(fcm):
    """The exchange used the client's default timeout (5 s in these tests), not the provider's."""
    fcm.token_delay_s = 3.0

    async def go():
        async with httpx.AsyncClient() as http:
            provider = FcmProvider(ServiceAccount.load(str(fcm.sa.path)), http, endpoint=fcm.url, timeout_s=0.5)
            return await provider.send(_notification(fcm_like.registration_token(71), "android"), 1)

    outcome = asyncio.run(go())
    assert isinstance(outcome, RetryLater) and outcome.reason.startswith("auth:"), outcome
    assert "DeadlineExceeded" in outcome.reason
    fcm.token_delay_s = 0.0
    assert isinstance(asyncio.run(go()), Delivered)  # the endpoint answering in time: sent


def test_a_timed_out_fcm_send_is_retried_as_the_same_notification(redis_url, redis_sync, geo_http, geo_url,
                                                                   material, fcm):
    token = fcm_like.registration_token(72)
    register(geo_http, "dl-fdev", "dl-fcust", platform="android", push_token=token)
    # the stand-in takes the first copy but answers after the deadline: for us, the outcome is unknown
    fcm.script(token, fcm_like.slow(3.0), fcm_like.ok())
    with gateway(redis_url, geo_url, material, fcm=fcm, provider_timeout_s=0.5, retry_base_s=0.1) as client:
        job = make_job("dl-fcust", "dl-fdev", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job, 30)
    assert d["status"] == "sent" and d["attempts"] == 2
    assert "outcome unknown" in d["history"][1]["reason"]
    first, second = [r.json["message"] for r in fcm.received if r.token == token]
    # Google collapses the copies it still holds; on the device, the tag replaces the one shown
    assert first["android"]["collapse_key"] == second["android"]["collapse_key"] == job.collapse_key
    assert first["android"]["notification"]["tag"] == second["android"]["notification"]["tag"] == job.collapse_key
    assert first["data"]["delivery_id"] == second["data"]["delivery_id"] == d["delivery_id"]


def test_a_timed_out_apns_send_is_retried_as_the_same_notification(redis_url, redis_sync, geo_http, geo_url,
                                                                   material, apns):
    token = apns_like.device_token(73)
    register(geo_http, "dl-adev", "dl-acust", platform="ios", push_token=token)
    apns.script(token, apns_like.slow(3.0), apns_like.ok())
    with gateway(redis_url, geo_url, material, apns=apns, provider_timeout_s=0.5, retry_base_s=0.1) as client:
        job = make_job("dl-acust", "dl-adev", platform="ios", push_token=token)
        enqueue(redis_sync, job)
        d = settled(client, job, 30)
    assert d["status"] == "sent" and d["attempts"] == 2
    assert "outcome unknown" in d["history"][1]["reason"]
    first, second = [r for r in apns.received if r.token == token]
    assert first.headers["apns-collapse-id"] == second.headers["apns-collapse-id"] == job.collapse_key
    assert first.headers["apns-id"] == second.headers["apns-id"]  # one message, in Apple's logs and ours
    assert first.json == second.json


class _NeverAnswers:
    """A provider stuck inside its send (a lock never released, a bug): only the gateway's bound on
    the whole send can end it."""

    name = "webhook"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, n, attempt):
        self.calls += 1
        await asyncio.Event().wait()


def test_a_send_stuck_inside_the_provider_is_cut_before_its_lease_ends(redis_url, redis_sync, geo_http, geo_url):
    from tests.integration.test_push_gateway import gateway as webhook_gateway, push_settings

    register(geo_http, "dl-wdev", "dl-wcust")
    settings = push_settings(redis_url, webhook_url="http://127.0.0.1:9/never", webhook_secret=SECRET,
                             provider_timeout_s=0.3, max_attempts=2, retry_base_s=0.1)
    with webhook_gateway(settings, geo_url) as client:
        stuck = _NeverAnswers()
        client.app.state.container.delivery.providers["webhook"] = stuck
        job = make_job("dl-wcust", "dl-wdev", platform="web")
        enqueue(redis_sync, job)
        d = settled(client, job, 30)
    # each attempt ended in a recorded outcome; without the bound the lease would have run out and
    # the delivery been taken for one whose worker died ("sent", unconfirmed)
    assert (d["status"], d["attempts"], stuck.calls) == ("failed", 2, 2)
    assert "no outcome within 1.2 s; outcome unknown" in d["reason"]
