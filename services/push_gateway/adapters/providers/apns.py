"""Apple Push Notification service over HTTP/2: `POST {endpoint}/3/device/{token}` with a
provider authentication token (an ES256 JWT signed with the team's `.p8` key), renewed every
`refresh_s` (Apple accepts one between 20 and 60 minutes old, and refuses renewals more often
than every 20 minutes). One HTTP/2 connection multiplexes the concurrent sends."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from vicino.services.kernel.contracts.push_tokens import is_apns_device_token

from ...domain.messages import MAX_PAYLOAD_BYTES, Notification, apns_headers, apns_payload
from ...domain.outcomes import Delivered, GiveUp, ProviderOutcome, RetryLater, TokenInvalid
from ...domain.retry_policy import parse_retry_after
from .base import ProviderConfigError, post_within, transport_failure

DEFAULT_ENDPOINT = "https://api.push.apple.com"
TOKEN_REASONS = {"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic"}
AUTH_REASONS = {"ExpiredProviderToken", "InvalidProviderToken", "MissingProviderToken"}
RETRY_REASONS = {"TooManyRequests", "InternalServerError", "ServiceUnavailable", "Shutdown",
                 "TooManyProviderTokenUpdates"}


@dataclass(frozen=True)
class ApnsKey:
    key_id: str
    team_id: str
    private_key: object

    @classmethod
    def load(cls, path: str, key_id: str, team_id: str) -> "ApnsKey":
        where = f"VICINO_APNS_KEY_FILE={path}"
        try:
            pem = Path(path).read_bytes()
        except OSError as e:
            raise ProviderConfigError(f"{where}: cannot read the file ({e.strerror})") from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise ProviderConfigError(f"{where}: not a PEM private key; expected the .p8 file Apple issues "
                                      f"({str(e)[:80]})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ProviderConfigError(f"{where}: an APNs key is an EC P-256 key; this one is not")
        return cls(key_id, team_id, key)


class ApnsProviderTokens:
    def __init__(self, key: ApnsKey, refresh_s: float = 40 * 60, clock=time.time) -> None:
        self.key = key
        self.refresh_s = refresh_s
        self._clock = clock
        self._token: str | None = None
        self._issued_at = 0.0
        self.issued = 0

    def get(self) -> str:
        now = self._clock()
        if self._token is None or now - self._issued_at >= self.refresh_s:
            self._token = jwt.encode({"iss": self.key.team_id, "iat": int(now)}, self.key.private_key,
                                     algorithm="ES256", headers={"kid": self.key.key_id})
            self._issued_at = now
            self.issued += 1
        return self._token

    def invalidate(self, token: str) -> None:
        if self._token == token:
            self._token = None


def apns_outcome(status: int, body: bytes, headers: httpx.Headers, now: float) -> ProviderOutcome:
    """Apple's answer as an outcome (the provider-token reasons are handled by the caller)."""
    if status == 200:
        return Delivered(headers.get("apns-id"))
    try:
        reason = str(orjson.loads(body)["reason"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        reason = f"unreadable error body {body[:60]!r}"
    wait = parse_retry_after(headers.get("retry-after"), now)
    if reason in TOKEN_REASONS or status == 410:
        return TokenInvalid(f"apns: {status} {reason}")
    if status == 429 or status >= 500 or reason in RETRY_REASONS:
        return RetryLater(f"apns: {status} {reason}", wait)
    return GiveUp(f"apns: {status} {reason}")


class ApnsProvider:
    name = "apns"
    # httpcore carries at most 100 streams on its HTTP/2 connection and queues the rest in its
    # pool, whose per-request cost grows with the queue: the gateway waits for a slot instead
    max_in_flight = 100

    def __init__(self, key: ApnsKey, topic: str, http: httpx.AsyncClient, *, endpoint: str = DEFAULT_ENDPOINT,
                 timeout_s: float = 10.0, refresh_s: float = 40 * 60,
                 clock=time.time) -> None:
        self.tokens = ApnsProviderTokens(key, refresh_s, clock)
        self.topic = topic
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._timeout = timeout_s
        self._clock = clock

    async def send(self, n: Notification, attempt: int) -> ProviderOutcome:
        payload = apns_payload(n)
        if len(payload) > MAX_PAYLOAD_BYTES:
            return GiveUp(f"payload_too_large: {len(payload)} bytes > APNs's {MAX_PAYLOAD_BYTES}")
        if not is_apns_device_token(n.token):
            # geo refuses such tokens at registration; one stored before that check must still never
            # reach the URL's path (a `/`, `?` or `..` would address another resource)
            return TokenInvalid("apns: malformed device token (not 32 to 100 bytes of hex); not sent")
        headers = apns_headers(n, self.topic)
        url = f"{self._endpoint}/3/device/{quote(n.token, safe='')}"
        for renewed in (False, True):
            token = self.tokens.get()
            try:
                r = await post_within(self._http, url, self._timeout, content=payload,
                                      headers={**headers, "authorization": f"bearer {token}"})
            except httpx.HTTPError as e:
                return transport_failure(e)
            if r.status_code == 403 and any(reason.encode() in r.content for reason in AUTH_REASONS):
                if not renewed:
                    self.tokens.invalidate(token)
                    continue
                return RetryLater(f"auth: APNs refused a new provider token ({r.text[:120]}); "
                                  "check VICINO_APNS_KEY_ID, VICINO_APNS_TEAM_ID and the key file")
            return apns_outcome(r.status_code, r.content, r.headers, self._clock())
        raise AssertionError("unreachable")


