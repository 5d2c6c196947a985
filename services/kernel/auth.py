"""Bearer tokens: the bootstrap admin token, API keys with roles (`roles`; their store is the
runtime's `api_keys`), and signed device tokens.

A device token is `v1.<payload>.<signature>`: base64url JSON `{d: device_id, c: customer_id,
j: token id, e: expiry}` signed with HMAC-SHA256. Any replica can verify it offline; the
token id is compared with the device's current one (kept by the service that registered it)
so that re-registering a device revokes its previous token. A refresh makes a new current token
and keeps the one it replaced working for a grace period (`customer_state.token_accepted`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

from .problems import Forbidden, Unauthorized


@dataclass(frozen=True, slots=True)
class DeviceClaims:
    device_id: str
    customer_id: str
    token_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key (the bootstrap admin token, or an API key and its roles) or one
    device of one customer. `admin` is the admin role."""

    admin: bool
    device: DeviceClaims | None = None
    roles: frozenset[str] = frozenset()
    key_id: str | None = None

    @property
    def actor(self) -> str:
        """Who, for logs and the audit trail (never a customer id)."""
        return f"device:{self.device.device_id}" if self.device else f"key:{self.key_id}"


ADMIN = Principal(admin=True, roles=frozenset({"admin"}), key_id="admin-token")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: str, cache_size: int = 100_000) -> None:
        self._key = hashlib.sha256(("vicino-device-token:" + secret).encode()).digest()
        # A phone sends the same token every few seconds: remember verified ones (the expiry is
        # still checked on every use; revocation is checked against the device's record).
        self._verified: dict[str, DeviceClaims] = {}
        self._cache_size = cache_size

    def issue(self, claims: DeviceClaims) -> str:
        payload = _b64(orjson.dumps({"d": claims.device_id, "c": claims.customer_id,
                                     "j": claims.token_id, "e": int(claims.expires_at)}))
        sig = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        return f"v1.{payload}.{sig}"

    def verify(self, token: str, now: float) -> DeviceClaims:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            if len(self._verified) >= self._cache_size:
                self._verified.clear()  # crude but bounded; refilled by the next requests
            self._verified[token] = claims
        if claims.expires_at <= now:
            raise Unauthorized("token expired; register the device again for a new one "
                               "(a device token can be refreshed only before it expires)")
        return claims

    def _verify_signature(self, token: str) -> DeviceClaims:
        try:
            version, payload, sig = token.split(".")
        except ValueError:
            raise Unauthorized("malformed bearer token") from None
        if version != "v1":
            raise Unauthorized("unknown token version")
        expected = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, sig):
            raise Unauthorized("invalid token signature")
        try:
            raw = orjson.loads(_unb64(payload))
            claims = DeviceClaims(str(raw["d"]), str(raw["c"]), str(raw["j"]), float(raw["e"]))
        except Exception:
            raise Unauthorized("malformed token payload") from None
        return claims


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token>")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return value.strip()


def is_admin_token(token: str, admin_token: str) -> bool:
    return hmac.compare_digest(token.encode(), admin_token.encode())


def require_roles(p: Principal, accepted: frozenset[str], *, devices: bool = False) -> Principal:
    """A key with one of `accepted` (admin opens everything), or, where `devices`, a device token
    (whose own checks follow). The refusal names the role needed."""
    needed = " or ".join(sorted(accepted | {"admin"}))
    if p.device is not None:
        if devices:
            return p
        raise Forbidden(f"this endpoint needs an API key with the role {needed}; a device token may not call it")
    if p.admin or p.roles & accepted:
        return p
    held = ", ".join(sorted(p.roles)) or "none"
    raise Forbidden(f"this endpoint needs the role {needed}; this key holds {held}")


REPLACED_TOKEN = ("this device token was revoked: replaced by a newer registration or by a refresh whose grace "
                  "period has ended, or the device was removed; register the device again for a new one")
