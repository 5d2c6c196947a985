"""The push-provider stand-ins (testbed/push_servers) answer as FCM, Google's token endpoint and APNs
do, driven by a real httpx client (HTTP/2 + TLS for APNs), in a thread and as a separate process."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest

from testbed.push_servers import (Reply, apns_like, apns_provider_token, fcm_like, free_port, google_assertion,
                                make_apns_key, make_service_account)
from testbed.push_servers.keys import JWT_BEARER

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
TOPIC = "com.vicino.app"
FCM_TOKEN = fcm_like.registration_token(1)
DEVICE = apns_like.device_token(1)


# the stand-ins, per module
from tests.push_provider_fixtures import apns, apns_server, fcm, fcm_server, material  # noqa: E402,F401


def run(coro):
    return asyncio.run(coro)


# --- FCM ------------------------------------------------------------------------------------------

async def grant(c: httpx.AsyncClient, fcm, **assertion_kw) -> httpx.Response:
    return await c.post(fcm.token_url, data={"grant_type": JWT_BEARER,
                                             "assertion": google_assertion(fcm.sa, **assertion_kw)})


async def access_token(c, fcm) -> str:
    r = await grant(c, fcm)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def message(token: str = FCM_TOKEN, **extra) -> dict:
    return {"message": {"token": token, "notification": {"title": "Caffè", "body": "-20% oggi"},
                        "data": {"offer_id": "o1", "store_id": "s1"},
                        "android": {"collapse_key": "v1", "ttl": "300s", "priority": "high"}, **extra}}


async def send(c, fcm, body, token: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return await c.post(fcm.send_url, content=orjson.dumps(body),
                        headers={**headers, "content-type": "application/json"})


def test_fcm_token_grant_then_send(fcm):
    async def go():
        async with httpx.AsyncClient() as c:
            r = await grant(c, fcm)
            assert r.status_code == 200
            body = r.json()
            assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["access_token"]
            r = await send(c, fcm, message(), body["access_token"])
            assert r.status_code == 200
            assert r.json()["name"].startswith("projects/vicino-test/messages/")
            r = await send(c, fcm, {**message(), "validate_only": True}, body["access_token"])
            assert r.json() == {"name": "projects/vicino-test/messages/fake_message_id"}
    run(go())
    assert fcm.grants == 1
    rec = fcm.received[0]
    assert rec.path == "/v1/projects/vicino-test/messages:send" and rec.token == FCM_TOKEN and rec.status == 200
    assert rec.json["message"]["data"] == {"offer_id": "o1", "store_id": "s1"}
    assert rec.headers["authorization"].startswith("Bearer ya29.") and rec.received_at <= time.time()


@pytest.mark.parametrize("kw, error, needle", [
    ({"private_key": "other"}, "invalid_grant", "Invalid JWT Signature."),
    ({"audience": "https://oauth2.googleapis.com/token"}, "invalid_grant", "audience"),
    ({"issued_at": time.time() - 7200}, "invalid_grant", "short-lived"),
    ({"lifetime_s": 7200}, "invalid_grant", "short-lived"),
    ({"scope": None}, "invalid_scope", "scope"),
])
def test_fcm_token_endpoint_refuses_bad_assertions(fcm, kw, error, needle, material):
    if kw.get("private_key") == "other":
        kw = {"private_key": make_service_account(material["dir"] / "other", fcm.token_url).private_key}

    async def go():
        async with httpx.AsyncClient() as c:
            return await grant(c, fcm, **kw)
    r = run(go())
    assert r.status_code == 400
    assert r.json()["error"] == error and needle in r.json()["error_description"]
    assert fcm.grants == 0


def test_fcm_token_endpoint_wants_the_jwt_bearer_grant(fcm):
    r = httpx.post(fcm.token_url, data={"grant_type": "client_credentials", "assertion": "x"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = httpx.post(fcm.token_url, data={"grant_type": JWT_BEARER, "assertion": "not.a.jwt"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def assert_google_error(r: httpx.Response, code: int, status: str, error_code: str | None = None) -> dict:
    assert r.status_code == code, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == status and isinstance(err["message"], str)
    if error_code:
        fcm_details = [d for d in err["details"] if d["@type"] == fcm_like.FCM_ERROR]
        assert fcm_details == [{"@type": fcm_like.FCM_ERROR, "errorCode": error_code}]
    return err


def test_fcm_401_without_or_with_a_wrong_token_and_403_for_another_project(fcm):
    async def go():
        async with httpx.AsyncClient() as c:
            missing = await send(c, fcm, message(), None)
            wrong = await send(c, fcm, message(), "ya29.not-issued-here")
            good = await access_token(c, fcm)
            other = await c.post(f"{fcm.url}/v1/projects/someone-else/messages:send", json=message(),
                                 headers={"authorization": f"Bearer {good}"})
            fcm.expire_access_tokens()
            expired = await send(c, fcm, message(), good)
            fcm.revoke_access_tokens()
            revoked = await send(c, fcm, message(), good)
            return missing, wrong, other, expired, revoked
    missing, wrong, other, expired, revoked = run(go())
    for r, reason in ((missing, "CREDENTIALS_MISSING"), (wrong, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
                      (expired, "ACCESS_TOKEN_EXPIRED"), (revoked, "ACCESS_TOKEN_TYPE_UNSUPPORTED")):
        err = assert_google_error(r, 401, "UNAUTHENTICATED")
        assert err["details"][0]["reason"] == reason
    assert "someone-else" in assert_google_error(other, 403, "PERMISSION_DENIED")["message"]
    assert [r.status for r in fcm.received] == [401, 401, 403, 401, 401]


FCM_SCRIPTED = [
    (fcm_like.unregistered(), 404, "NOT_FOUND", "UNREGISTERED"),
    (fcm_like.invalid_token(), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    (fcm_like.invalid_argument("Invalid TTL"), 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    (fcm_like.quota_exceeded(retry_after=7), 429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    (fcm_like.unavailable(retry_after=3), 503, "UNAVAILABLE", "UNAVAILABLE"),
    (fcm_like.internal(), 500, "INTERNAL", "INTERNAL"),
    (fcm_like.unauthenticated(), 401, "UNAUTHENTICATED", None),
    (fcm_like.sender_id_mismatch(), 403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
]


def test_fcm_scripted_errors_in_googles_format_then_success(fcm):
    fcm.script(FCM_TOKEN, *(s[0] for s in FCM_SCRIPTED))

    async def go():
        async with httpx.AsyncClient() as c:
            token = await access_token(c, fcm)
            return [await send(c, fcm, message(), token) for _ in range(len(FCM_SCRIPTED) + 1)]
    answers = run(go())
    for r, (_, code, status, error_code) in zip(answers, FCM_SCRIPTED):
        assert_google_error(r, code, status, error_code)
    assert answers[3].headers["retry-after"] == "7" and answers[4].headers["retry-after"] == "3"
    assert answers[1].json()["error"]["details"][1] == {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "message.token",
                             "description": "The registration token is not a valid FCM registration token"}]}
    assert answers[-1].status_code == 200  # the script is used up: success again
    assert [r.status for r in fcm.received] == [s[1] for s in FCM_SCRIPTED] + [200]


def test_fcm_validates_messages_like_fcm(fcm):
    big = {f"k{i}": "x" * 100 for i in range(40)}

    async def go():
        async with httpx.AsyncClient() as c:
            token = await access_token(c, fcm)
            return [await send(c, fcm, body, token) for body in (
                message(data={"offer_id": 12}),
                {**message(), "priority": "high"},
                message(android={"ttl": "five minutes"}),
                {"message": {"data": {"a": "b"}}},
                message(token="not a token!"),
                message(data=big),
                message(data=dict(list(big.items())[:30])),
                # what a campaign's push must never send as such: a boolean or a null data value,
                # a null image; and what it sends: strings, and the image in the notification
                message(data={"offer_id": "o1", "test": True}),
                message(data={"offer_id": "o1", "campaign_id": None}),
                message(notification={"title": "t", "body": "b", "image": None}),
                message(data={"offer_id": "o1", "campaign_id": "spring", "test": "1"},
                        notification={"title": "t", "body": "b", "image": "https://cdn.example.com/o1.jpg"}),
            )]
    (non_string, unknown, bad_ttl, no_target, bad_token, too_big, fits, boolean, null, null_image,
     campaign) = run(go())
    err = assert_google_error(non_string, 400, "INVALID_ARGUMENT")
    assert err["message"] == "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"
    assert "Unknown name \"priority\"" in assert_google_error(unknown, 400, "INVALID_ARGUMENT")["message"]
    assert "message.android.ttl" in assert_google_error(bad_ttl, 400, "INVALID_ARGUMENT")["message"]
    assert "Recipient" in assert_google_error(no_target, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")["message"]
    assert_google_error(bad_token, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert "too big" in assert_google_error(too_big, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")["message"]
    assert len(orjson.dumps(message(data=dict(list(big.items())[:30]))["message"])) <= 4096
    assert fits.status_code == 200
    err = assert_google_error(boolean, 400, "INVALID_ARGUMENT")
    assert err["message"] == "Invalid value at 'message.data[1].value' (TYPE_STRING), true"
    assert "(TYPE_STRING), null" in assert_google_error(null, 400, "INVALID_ARGUMENT")["message"]
    assert "message.notification.image" in assert_google_error(null_image, 400, "INVALID_ARGUMENT")["message"]
    assert campaign.status_code == 200


def test_fcm_faults_slow_malformed_drop(fcm):
    fcm.script(FCM_TOKEN, fcm_like.slow(0.3), fcm_like.malformed(), fcm_like.malformed(500), fcm_like.drop())

    async def go():
        async with httpx.AsyncClient() as c:
            token = await access_token(c, fcm)
            t = time.perf_counter()
            slow = await send(c, fcm, message(), token)
            took = time.perf_counter() - t
            bad200 = await send(c, fcm, message(), token)
            bad500 = await send(c, fcm, message(), token)
            with pytest.raises(httpx.RemoteProtocolError):
                await send(c, fcm, message(), token)
            return slow, took, bad200, bad500
    slow, took, bad200, bad500 = run(go())
    assert slow.status_code == 200 and took >= 0.3
    for r, code in ((bad200, 200), (bad500, 500)):
        assert r.status_code == code
        with pytest.raises(ValueError):
            r.json()
    assert [r.status for r in fcm.received] == [200, 200, 500, None]
    fcm.set_default(fcm_like.internal())
    fcm.script("other-token", fcm_like.ok())
    assert [(r.status_code) for r in run(_sends(fcm, [FCM_TOKEN, "other-token"]))] == [500, 200]


async def _sends(fcm, tokens):
    async with httpx.AsyncClient() as c:
        token = await access_token(c, fcm)
        return [await send(c, fcm, message(t), token) for t in tokens]


# --- APNs -----------------------------------------------------------------------------------------

def apns_headers(key, **overrides) -> dict:
    h = {"authorization": f"bearer {apns_provider_token(key)}", "apns-topic": TOPIC, "apns-push-type": "alert",
         "apns-priority": "10", "apns-expiration": str(int(time.time()) + 600), "apns-collapse-id": "visit-1"}
    h.update(overrides)
    return {k: v for k, v in h.items() if v is not None}


PAYLOAD = {"aps": {"alert": {"title": "Caffè", "body": "-20% oggi"}, "sound": "default"}, "offer_id": "o1"}


def apns_client(material) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, verify=material["tls"].client_context())


async def push(c, apns, key, token=DEVICE, body=PAYLOAD, **headers) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await c.post(f"{apns.url}/3/device/{token}", content=content, headers=apns_headers(key, **headers))


def test_apns_success_over_http2_echoes_the_apns_id(apns, material):
    key = material["apns_key"]
    apns_id = str(uuid.uuid4())

    async def go():
        async with apns_client(material) as c:
            return await push(c, apns, key, **{"apns-id": apns_id}), await push(c, apns, key)
    given, generated = run(go())
    assert given.http_version == "HTTP/2" and given.status_code == 200 and given.content == b""
    assert given.headers["apns-id"] == apns_id
    uuid.UUID(generated.headers["apns-id"])
    rec = apns.received[0]
    assert rec.path == f"/3/device/{DEVICE}" and rec.token == DEVICE and rec.status == 200
    assert rec.json == PAYLOAD and rec.headers["apns-topic"] == TOPIC and rec.headers["apns-id"] == apns_id


def test_apns_checks_the_provider_token_and_headers_as_apple_does(apns, material):
    key = material["apns_key"]
    stranger = make_apns_key(material["dir"] / "stranger", key_id=key.key_id, team_id=key.team_id)
    cases = [
        ({"authorization": None}, 403, "MissingProviderToken"),
        ({"authorization": f"bearer {apns_provider_token(stranger)}"}, 403, "InvalidProviderToken"),
        ({"authorization": f"bearer {apns_provider_token(key, key_id='ZZZ9999ZZZ')}"}, 403, "InvalidProviderToken"),
        ({"authorization": f"bearer {apns_provider_token(key, team_id='OTHER12345')}"}, 403, "InvalidProviderToken"),
        ({"authorization": f"bearer {apns_provider_token(key, issued_at=time.time() - 3700)}"}, 403,
         "ExpiredProviderToken"),
        ({"apns-topic": None}, 400, "MissingTopic"),
        ({"apns-topic": "com.other.app"}, 400, "TopicDisallowed"),
        ({"apns-push-type": None}, 400, "InvalidPushType"),
        ({"apns-push-type": "shout"}, 400, "InvalidPushType"),
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"apns-id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"apns-expiration": "tomorrow"}, 400, "BadExpirationDate"),
        ({"apns-collapse-id": "x" * 65}, 400, "BadCollapseId"),
        ({"token": "not-hex"}, 400, "BadDeviceToken"),
        ({"body": b""}, 400, "PayloadEmpty"),
        ({"body": {"aps": {"alert": "x" * 4100}}}, 413, "PayloadTooLarge"),
    ]

    async def go():
        async with apns_client(material) as c:
            out = []
            for overrides, _, _ in cases:
                kw = dict(overrides)
                token, body = kw.pop("token", DEVICE), kw.pop("body", PAYLOAD)
                out.append(await push(c, apns, key, token, body, **kw))
            fits = {"aps": {"alert": "x" * (4096 - len(orjson.dumps({"aps": {"alert": ""}})))}}
            assert len(orjson.dumps(fits)) == 4096
            out.append(await push(c, apns, key, body=fits))
            out.append(await c.get(f"{apns.url}/3/device/{DEVICE}", headers=apns_headers(key)))
            out.append(await c.post(f"{apns.url}/4/device/{DEVICE}", headers=apns_headers(key), content=b"{}"))
            return out
    answers = run(go())
    for r, (overrides, status, reason) in zip(answers, cases):
        assert (r.status_code, r.json()) == (status, {"reason": reason}), overrides
        assert r.headers["content-type"] == "application/json" and "apns-id" in r.headers
    assert answers[len(cases)].status_code == 200  # exactly 4096 bytes is allowed
    assert answers[-2].json() == {"reason": "MethodNotAllowed"} and answers[-2].status_code == 405
    assert answers[-1].json() == {"reason": "BadPath"} and answers[-1].status_code == 404


def test_apns_scripted_errors_then_success(apns, material):
    key = material["apns_key"]
    scripted = [(apns_like.bad_device_token(), 400, "BadDeviceToken"),
                (apns_like.unregistered(), 410, "Unregistered"),
                (apns_like.too_many_requests(retry_after=5), 429, "TooManyRequests"),
                (apns_like.internal(), 500, "InternalServerError"),
                (apns_like.unavailable(), 503, "ServiceUnavailable"),
                (apns_like.expired_provider_token(), 403, "ExpiredProviderToken")]
    apns.script(DEVICE, *(s[0] for s in scripted))

    async def go():
        async with apns_client(material) as c:
            return [await push(c, apns, key) for _ in range(len(scripted) + 1)]
    answers = run(go())
    for r, (_, status, reason) in zip(answers, scripted):
        assert r.status_code == status and r.json()["reason"] == reason
    unregistered = answers[1].json()
    assert set(unregistered) == {"reason", "timestamp"} and abs(unregistered["timestamp"] / 1000 - time.time()) < 60
    assert answers[2].headers["retry-after"] == "5"
    assert answers[-1].status_code == 200 and answers[-1].content == b""


def test_apns_faults_slow_malformed_reset_drop(apns, material):
    key = material["apns_key"]
    apns.script(DEVICE, apns_like.slow(0.3), apns_like.malformed(), apns_like.reset(), apns_like.drop())

    async def go():
        async with apns_client(material) as c:
            t = time.perf_counter()
            slow = await push(c, apns, key)
            took = time.perf_counter() - t
            bad = await push(c, apns, key)
            with pytest.raises(httpx.RemoteProtocolError):
                await push(c, apns, key)  # the stream is reset
            with pytest.raises(httpx.TransportError):
                await push(c, apns, key)  # the connection is cut
            after = await push(c, apns, key)  # the client reconnects
            return slow, took, bad, after
    slow, took, bad, after = run(go())
    assert slow.status_code == 200 and took >= 0.3
    assert bad.status_code == 500
    with pytest.raises(ValueError):
        bad.json()
    assert after.status_code == 200
    assert [r.status for r in apns.received] == [200, 500, None, None, 200]
    assert apns.connections_accepted == 2


def test_apns_multiplexes_concurrent_requests_on_one_connection(apns, material):
    key = material["apns_key"]
    apns.set_default(apns_like.slow(0.2))  # keep them open long enough to overlap

    async def go():
        async with apns_client(material) as c:
            return await asyncio.gather(*(push(c, apns, key, apns_like.device_token(i)) for i in range(20)))
    answers = run(go())
    assert all(r.status_code == 200 for r in answers)
    assert apns.connections_accepted == 1
    assert apns.max_open_streams >= 5
    assert len({r.connection for r in apns.received}) == 1 and len(apns.received) == 20


# --- as a separate process ------------------------------------------------------------------------

def test_both_run_as_processes_with_control_endpoints(material):
    d = material["dir"] / "proc"
    key, tls = material["apns_key"], material["tls"]
    port = free_port()
    sa = make_service_account(d, f"http://127.0.0.1:{port}/token")
    procs = [subprocess.Popen([sys.executable, "-m", "testbed.push_servers.fcm_like", "--port", str(port),
                               "--service-account-public-key", str(sa.public_key_path),
                               "--client-email", sa.client_email, "--project-id", sa.project_id],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, "-m", "testbed.push_servers.apns_like", "--cert", str(tls.cert),
                               "--key", str(tls.key), "--key-id", key.key_id, "--team-id", key.team_id,
                               "--topic", TOPIC, "--public-key", str(key.public_key_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)]
    try:
        fcm_line, apns_line = (p.stdout.readline().strip() for p in procs)
        assert fcm_line == f"READY http://127.0.0.1:{port}"
        assert apns_line.startswith("READY https://127.0.0.1:")
        fcm_url, apns_url = fcm_line.split()[1], apns_line.split()[1]

        async def go():
            async with httpx.AsyncClient() as c:
                r = await c.post(f"{fcm_url}/_control/script", json={"token": FCM_TOKEN, "replies": [
                    fcm_like.unregistered().to_json(), {"status": 503, "body": "busy", "kind": "malformed"}]})
                assert r.json() == {"ok": True, "queued": 2}
                r = await c.post(f"{fcm_url}/token", data={"grant_type": JWT_BEARER, "assertion": google_assertion(sa)})
                token = r.json()["access_token"]
                url = f"{fcm_url}/v1/projects/{sa.project_id}/messages:send"
                h = {"authorization": f"Bearer {token}"}
                statuses = [(await c.post(url, json=message(), headers=h)).status_code for _ in range(3)]
                assert statuses == [404, 503, 200]
                records = (await c.get(f"{fcm_url}/_control/received", params={"since": 1})).json()
                assert [(r["index"], r["status"], r["token"]) for r in records] == [(1, 503, FCM_TOKEN),
                                                                                   (2, 200, FCM_TOKEN)]
                assert (await c.get(f"{fcm_url}/_control/stats")).json()["grants"] == 1
                await c.post(f"{fcm_url}/_control/default", json={"reply": fcm_like.internal().to_json()})
                assert (await c.post(url, json=message(), headers=h)).status_code == 500
                await c.post(f"{fcm_url}/_control/reset")
                assert (await c.get(f"{fcm_url}/_control/received")).json() == []
                assert (await c.post(url, json=message(), headers=h)).status_code == 200

            async with apns_client(material) as c:
                r = await c.post(f"{apns_url}/_control/script", json={
                    "token": DEVICE, "replies": [apns_like.unregistered().to_json()]})
                assert r.http_version == "HTTP/2" and r.json()["queued"] == 1
                assert (await push(c, Url(apns_url), key)).status_code == 410
                assert (await push(c, Url(apns_url), key)).status_code == 200
                records = (await c.get(f"{apns_url}/_control/received")).json()
                assert [(r["status"], r["token"]) for r in records] == [(410, DEVICE), (200, DEVICE)]
                assert (await c.get(f"{apns_url}/_control/stats")).json()["connections_accepted"] == 1
        run(go())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(5)
            p.stdout.close()


class Url:
    def __init__(self, url: str) -> None:
        self.url = url


def test_reply_round_trips_through_json():
    r = fcm_like.quota_exceeded(retry_after=9)
    assert Reply.from_json(orjson.loads(orjson.dumps(r.to_json()))).to_json() == r.to_json()
    with pytest.raises(ValueError):
        Reply(kind="explode")
