"""Push tokens: what each platform's token may look like (checked at registration), and the APNs
adapter, which puts the token in its URL's path, refusing anything else without a request."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vicino.services.kernel.contracts.push_tokens import is_apns_device_token, push_token_problem
from vicino.services.push_gateway.adapters.providers.apns import ApnsKey, ApnsProvider
from vicino.services.push_gateway.domain.messages import Notification
from vicino.services.push_gateway.domain.outcomes import Delivered, TokenInvalid

FCM_LIKE = "cK3x1aB2QpS:APA91bH" + "x_Y-z9" * 24


@pytest.mark.parametrize("platform,token", [
    ("ios", "ab" * 32), ("ios", "AB01" * 16), ("ios", "0f" * 100),
    ("android", FCM_LIKE), ("android", "f" * 4096),
    ("web", "https://push.example/subscription?id=42&k=v"),
])
def test_well_formed_push_tokens_are_taken(platform, token):
    assert push_token_problem(platform, token) is None


@pytest.mark.parametrize("platform,token", [
    ("ios", "ab" * 31), ("ios", "a" * 65), ("ios", "0f" * 101), ("ios", "zz" * 32), ("ios", "ab" * 31 + "/x"),
    ("ios", "../" + "ab" * 32), ("ios", "ab" * 32 + "?x=1"), ("ios", "ab" * 32 + "\n"), ("ios", ""),
    ("android", ""), ("android", "f" * 4097), ("android", FCM_LIKE + "/../x"), ("android", "a b"),
    ("android", "tok\r\nX-Injected: 1"),
    ("web", ""), ("web", "with space"), ("web", "tab\there"), ("web", "é"),
    ("symbian", "ab" * 32),
])
def test_malformed_push_tokens_are_refused(platform, token):
    assert push_token_problem(platform, token) is not None


def _notification(token: str) -> Notification:
    return Notification(delivery_id="dlv_1", customer_id="c1", device_id="d1", platform="ios", token=token,
                        title="t", body="b", data={"store_id": "s1", "delivery_id": "dlv_1"}, collapse_key="v1",
                        expires_at=4_000_000_000.0)


def _send(token: str) -> tuple[object, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"apns-id": "00000000-0000-0000-0000-000000000001"})

    async def go():
        key = ApnsKey("KEY1234567", "TEAM123456", ec.generate_private_key(ec.SECP256R1()))
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            return await ApnsProvider(key, "com.example.app", http, endpoint="https://apns.test").send(
                _notification(token), 1)

    return asyncio.run(go()), seen


@pytest.mark.parametrize("token", ["../../../3/device/" + "ab" * 32, "ab" * 32 + "?topic=other",
                                   "ab" * 32 + "/../../x", "ab" * 32 + "%2F", "not-a-token"])
def test_the_apns_adapter_never_puts_a_malformed_token_in_its_path(token):
    outcome, seen = _send(token)
    assert isinstance(outcome, TokenInvalid) and "malformed" in outcome.reason
    assert seen == []  # refused before any request


def test_the_apns_adapter_addresses_exactly_the_device():
    token = "c0ffee" * 10 + "abcd"
    assert is_apns_device_token(token)
    outcome, seen = _send(token)
    assert isinstance(outcome, Delivered)
    assert [r.url.raw_path for r in seen] == [f"/3/device/{token}".encode()]
