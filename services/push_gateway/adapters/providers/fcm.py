"""Firebase Cloud Messaging, HTTP v1 API: an OAuth2 access token from a service-account key
(a signed JWT exchanged at the key file's `token_uri`, cached until near expiry), then
`POST {endpoint}/v1/projects/{project_id}/messages:send`. Errors are mapped as Google documents
them (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from ...domain.messages import MAX_PAYLOAD_BYTES, Notification, fcm_message, fcm_payload_size
from ...domain.outcomes import Delivered, GiveUp, ProviderOutcome, RetryLater, TokenInvalid
from ...domain.retry_policy import parse_retry_after
from .base import ProviderConfigError, post_within, transport_failure

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
REFRESH_MARGIN_S = 300.0  # a token is renewed this long before Google says it expires


@dataclass(frozen=True)
class ServiceAccount:
    project_id: str
    client_email: str
    private_key_id: str
    private_key: object
    token_uri: str

    @classmethod
    def load(cls, path: str) -> "ServiceAccount":
        where = f"VICINO_FCM_CREDENTIALS={path}"
        try:
            raw = orjson.loads(Path(path).read_bytes())
        except OSError as e:
            raise ProviderConfigError(f"{where}: cannot read the file ({e.strerror})") from None
        except orjson.JSONDecodeError:
            raise ProviderConfigError(f"{where}: not JSON; expected a Google service-account key file") from None
        if not isinstance(raw, dict) or raw.get("type") != "service_account":
            raise ProviderConfigError(f"{where}: not a service-account key (\"type\" must be \"service_account\")")
        missing = [f for f in ("project_id", "client_email", "private_key", "token_uri") if not raw.get(f)]
        if missing:
            raise ProviderConfigError(f"{where}: missing {', '.join(missing)}")
        try:
            key = load_pem_private_key(raw["private_key"].encode(), password=None)
        except (ValueError, TypeError) as e:
            raise ProviderConfigError(f"{where}: private_key does not parse ({e})") from None
        return cls(raw["project_id"], raw["client_email"], raw.get("private_key_id") or "", key, raw["token_uri"])


class TokenEndpointError(Exception):
    pass


class FcmAccessTokens:
    """OAuth2 access tokens for the service account, shared by all sends of this process."""

    def __init__(self, account: ServiceAccount, http: httpx.AsyncClient, clock=time.time,
                 timeout_s: float = 10.0) -> None:
        self.account = account
        self._http = http
        self._timeout = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.grants = 0

    async def get(self) -> str:
        if self._token and self._clock() < self._expires_at - REFRESH_MARGIN_S:
            return self._token
        async with self._lock:  # one exchange, however many sends are waiting
            if self._token and self._clock() < self._expires_at - REFRESH_MARGIN_S:
                return self._token
            return await self._exchange()

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None

    async def _exchange(self) -> str:
        now = int(self._clock())
        assertion = jwt.encode({"iss": self.account.client_email, "scope": SCOPE, "aud": self.account.token_uri,
                                "iat": now, "exp": now + 3600}, self.account.private_key, algorithm="RS256",
                               headers={"kid": self.account.private_key_id} if self.account.private_key_id else None)
        try:
            r = await post_within(self._http, self.account.token_uri, self._timeout, data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion})
        except httpx.HTTPError as e:
            raise TokenEndpointError(f"token endpoint unreachable ({type(e).__name__})") from None
        try:
            body = r.json()
            token, ttl = body["access_token"], float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise TokenEndpointError(f"token endpoint answered {r.status_code} without an access token: "
                                     f"{r.text[:200]}") from None
        if r.status_code != 200:
            raise TokenEndpointError(f"token endpoint answered {r.status_code}: {r.text[:200]}")
        self._token, self._expires_at = token, self._clock() + ttl
        self.grants += 1
        return token


def fcm_outcome(status: int, body: bytes, retry_after: str | None, now: float) -> ProviderOutcome:
    """Google's answer to `messages:send`, as an outcome (401/403 auth are handled by the caller)."""
    if 200 <= status < 300:
        try:
            return Delivered(orjson.loads(body).get("name"))
        except (orjson.JSONDecodeError, AttributeError):
            return Delivered(None)  # accepted; only the receipt's id is unreadable
    try:
        err = orjson.loads(body)["error"]
        code = err.get("status", "")
        message = str(err.get("message", ""))[:200]
        details = err.get("details") or []
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        code, message, details = "", f"unreadable error body: {body[:80]!r}", []
    fcm_code = next((d.get("errorCode") for d in details if isinstance(d, dict) and d.get("errorCode")), None) or code
    token_field = any(v.get("field") == "message.token" for d in details if isinstance(d, dict)
                      for v in d.get("fieldViolations") or [] if isinstance(v, dict))
    wait = parse_retry_after(retry_after, now)
    if fcm_code == "UNREGISTERED" or status == 404:
        return TokenInvalid(f"fcm: {fcm_code or 'NOT_FOUND'}: the app was uninstalled or the token expired")
    if fcm_code == "SENDER_ID_MISMATCH":
        return TokenInvalid("fcm: SENDER_ID_MISMATCH: the token belongs to another Firebase project")
    if status == 400 and (token_field or "registration token" in message.lower()):
        return TokenInvalid(f"fcm: INVALID_ARGUMENT: invalid registration token ({message})")
    if status == 429 or status >= 500:
        return RetryLater(f"fcm: {status} {fcm_code or 'error'}: {message}", wait)
    return GiveUp(f"fcm: {status} {fcm_code or 'error'}: {message}")


class FcmProvider:
    name = "fcm"

    def __init__(self, account: ServiceAccount, http: httpx.AsyncClient, *, endpoint: str = DEFAULT_ENDPOINT,
                 timeout_s: float = 10.0, clock=time.time) -> None:
        self.tokens = FcmAccessTokens(account, http, clock, timeout_s)
        self._http = http
        self._url = f"{endpoint.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
        self._timeout = timeout_s
        self._clock = clock

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome:
        message = fcm_message(n, self._clock())
        size = fcm_payload_size(message)
        if size > MAX_PAYLOAD_BYTES:
            return GiveUp(f"payload_too_large: {size} bytes > FCM's {MAX_PAYLOAD_BYTES}")
        content = orjson.dumps(message)
        for refreshed in (False, True):
            try:
                token = await self.tokens.get()
            except TokenEndpointError as e:
                return RetryLater(f"auth: {e}")
            try:
                r = await post_within(self._http, self._url, self._timeout, content=content, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/json; UTF-8"})
            except httpx.HTTPError as e:
                return transport_failure(e)
            if r.status_code in (401, 403) and b"SENDER_ID_MISMATCH" not in r.content:
                if not refreshed:
                    self.tokens.invalidate(token)  # expired or revoked early: one fresh token
                    continue
                return RetryLater(f"auth: FCM refused a fresh access token ({r.status_code}: "
                                  f"{r.text[:160]}); check the service account's permissions")
            return fcm_outcome(r.status_code, r.content, r.headers.get("retry-after"), self._clock())
        raise AssertionError("unreachable")
