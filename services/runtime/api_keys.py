"""API keys and the audit trail, in Redis, shared by every service.

- `vicino:{keys}:keys` (hash): key_id -> JSON of a `KeyRecord` (name, roles, created_at, the
  keyed hash of the secret, revoked_at). A request with a key reads its record on every call, so
  a revocation holds at once on every replica. Revoked records stay, for the audit trail.
- `vicino:{audit}:log` (stream): one entry per write made with a key or the admin token (who,
  method, route template, target, status, when), trimmed by age (`VICINO_AUDIT_RETENTION_DAYS`, `MINID` on each `XADD`).
  A target that names a person (a customer or device id, an identifier) is kept as a keyed
  hash, so that an erased customer's id is nowhere in it.

Every service authenticates with `Authenticator`; the routes of the keys and the audit trail
are served by the geo service (`services/geo/api/access_routes.py`).
"""
from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import Depends

from ..kernel.auth import ADMIN, Principal, TokenSigner, is_admin_token, parse_bearer, require_roles
from ..kernel.problems import TOKEN_INVALID, NotFound, Unauthorized
from ..kernel.roles import KeyRecord, check_roles, new_key, secret_hash, service_key, split_key
from .rate_limit import RateLimiter

KEYS = "vicino:{keys}:keys"
AUDIT = "vicino:{audit}:log"

log = logging.getLogger("vicino.access")


def _record(raw: bytes) -> KeyRecord:
    d = orjson.loads(raw)
    return KeyRecord(key_id=d["key_id"], name=d["name"], roles=frozenset(d["roles"]), created_at=d["created_at"],
                     hash=d["hash"], revoked_at=d.get("revoked_at"))


def _raw(r: KeyRecord) -> bytes:
    return orjson.dumps({"key_id": r.key_id, "name": r.name, "roles": sorted(r.roles), "created_at": r.created_at,
                         "hash": r.hash, "revoked_at": r.revoked_at})


class KeyStore:
    def __init__(self, redis, signing_secret: str) -> None:
        self._r = redis
        self._secret = signing_secret

    async def create(self, name: str, roles, now: float) -> tuple[KeyRecord, str]:
        """A new key; returns its record and the key itself (shown once, never stored)."""
        held = check_roles(roles)
        for _ in range(5):
            key_id, secret, key = new_key()
            rec = KeyRecord(key_id, name, held, now, secret_hash(self._secret, key_id, secret))
            if await self._r.hsetnx(KEYS, key_id, _raw(rec)):
                return rec, key
        raise RuntimeError("could not draw an unused key id")

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._r.hget(KEYS, key_id)
        return None if raw is None else _record(raw)

    async def list(self) -> list[KeyRecord]:
        return sorted((_record(v) for v in (await self._r.hgetall(KEYS)).values()), key=lambda r: r.created_at)

    async def revoke(self, key_id: str, now: float) -> KeyRecord:
        rec = await self.get(key_id)
        if rec is None:
            raise NotFound(f"no API key {key_id!r}")
        if rec.revoked_at is None:
            rec = KeyRecord(rec.key_id, rec.name, rec.roles, rec.created_at, rec.hash, now)
            await self._r.hset(KEYS, key_id, _raw(rec))
        return rec

    async def ensure_service_key(self, service: str, roles, now: float) -> str:
        """The service's own key (derived from the shared secret), registered with exactly `roles`
        unless an operator revoked it; returns the key to send."""
        key_id, key = service_key(self._secret, service)
        secret = split_key(key)[1]
        want = KeyRecord(key_id, f"service: {service}", check_roles(roles), now, secret_hash(self._secret, key_id, secret))
        current = await self.get(key_id)
        if current is not None and current.revoked_at is not None:
            log.warning("this service's key was revoked: its calls to other services will be refused",
                        extra={"fields": {"key_id": key_id}})
        elif current is None or current.roles != want.roles or current.hash != want.hash:
            await self._r.hset(KEYS, key_id, _raw(want))
        return key

    async def authenticate(self, token: str) -> KeyRecord:
        parts = split_key(token)
        if parts is None:
            raise Unauthorized("unknown bearer token", code=TOKEN_INVALID)
        rec = await self.get(parts[0])
        # one answer for an unknown id, a wrong secret and a revoked key: none says which
        if rec is None or rec.revoked_at is not None or not hmac.compare_digest(
                rec.hash, secret_hash(self._secret, parts[0], parts[1])):
            raise Unauthorized("unknown or revoked API key", code=TOKEN_INVALID)
        return rec


# where the HTTP edge (`edge_guard`) leaves the caller it authenticated before the body: in the
# request's state, as (Authorization header, Principal)
EDGE_PRINCIPAL = "vicino_edge_principal"


class Authenticator:
    """Bearer token → `Principal`: the bootstrap admin token, an API key (its roles), or a device
    token (signature and expiry; whether it is still the device's current one is the caller's
    check, against the registration). `limiter`: the rate limits the HTTP edge applies to the
    callers it authenticates (none when None)."""

    def __init__(self, redis, admin_token: str, signer: TokenSigner, signing_secret: str,
                 limiter: RateLimiter | None = None) -> None:
        self.admin_token = admin_token
        self.signer = signer
        self.keys = KeyStore(redis, signing_secret)
        self.limiter = limiter

    async def principal(self, authorization: str | None, now: float, scope: dict | None = None) -> Principal:
        """`scope`: the request's; the caller the HTTP edge already authenticated for this same
        header is reused (an API key is one Redis read, not two)."""
        if scope is not None:
            seen = (scope.get("state") or {}).get(EDGE_PRINCIPAL)
            if seen is not None and seen[0] == authorization:
                return seen[1]
        token = parse_bearer(authorization)
        if is_admin_token(token, self.admin_token):
            return ADMIN
        if token.startswith("v1."):
            return Principal(admin=False, device=self.signer.verify(token, now))
        rec = await self.keys.authenticate(token)
        return Principal(admin="admin" in rec.roles, roles=rec.roles, key_id=rec.key_id)


# path parameters that name no person; any other (a customer id, a device id, an identifier's
# value) enters the trail as a keyed hash, so that erasing a customer leaves no id of theirs here
PUBLIC_PARAMS = frozenset({"store_id", "offer_id", "key_id", "name", "delivery_id", "kind"})


class AuditTrail:
    def __init__(self, redis, retention_days: float, signing_secret: str) -> None:
        self._r = redis
        self.retention_s = retention_days * 86_400
        self._key = ("vicino-audit:" + signing_secret).encode()

    def pseudonym(self, value: str) -> str:
        """How a personal id appears in the trail: `~` and 16 hex digits of its keyed hash (the
        same id, the same pseudonym: `GET /v1/audit?customer_id=` finds a customer's entries)."""
        return "~" + hmac.new(self._key, value.encode(), "sha256").hexdigest()[:16]

    def target_of(self, params: dict) -> str | None:
        return ",".join(f"{k}={v if k in PUBLIC_PARAMS else self.pseudonym(str(v))}"
                        for k, v in params.items()) or None

    async def record(self, *, key_id: str, method: str, route: str, params: dict, status: int, at: float) -> None:
        minid = f"{int((at - self.retention_s) * 1000)}-0"
        # one round trip: the entry, and the trim by age (MINID) of what is past retention
        await self._r.xadd(AUDIT, {"key_id": key_id, "method": method, "route": route,
                                   "target": self.target_of(params) or "", "status": str(status), "at": repr(at)},
                           minid=minid, approximate=True)

    async def read(self, start: float, end: float, key_id: str | None, limit: int) -> list[dict]:
        out = []
        entries = await self._r.xrange(AUDIT, min=f"{int(start * 1000)}-0", max=f"{int(end * 1000)}-99999999999",
                                       count=limit if key_id is None else None)
        for _, f in entries:
            e = {k.decode(): v.decode() for k, v in f.items()}
            if key_id is not None and e["key_id"] != key_id:
                continue
            out.append({"key_id": e["key_id"], "method": e["method"], "route": e["route"],
                        "target": e["target"] or None, "status": int(e["status"]), "at": float(e["at"])})
            if len(out) >= limit:
                break
        return out


# --- at the HTTP edge: which roles a route accepts, the OpenAPI saying so, the audit trail ---

@dataclass(frozen=True)
class RouteAccess:
    """What a route accepts: keys with one of `roles` (admin always), and whether a device token
    may call it (`devices`: "any" device, "own" customer's or delivery's device only, or "")."""
    roles: tuple[str, ...]
    devices: str = ""


def role_dependency(caller, *accepted: str, devices: str = ""):
    """An annotated dependency that lets through keys with one of `accepted` (admin always) and,
    where `devices`, device tokens; it carries its `RouteAccess` for the OpenAPI document."""
    wanted = frozenset(accepted) or frozenset({"admin"})

    async def dependency(p: Principal = Depends(caller)) -> Principal:
        return require_roles(p, wanted, devices=bool(devices))

    dependency.vicino_access = RouteAccess(tuple(sorted(wanted | {"admin"})), devices)
    return Annotated[Principal, Depends(dependency)]


def mark_access(fn, *accepted: str, devices: str = ""):
    """Declares the access of a hand-written dependency (one that checks a device's customer)."""
    fn.vicino_access = RouteAccess(tuple(sorted(frozenset(accepted) | {"admin"})), devices)
    return fn


def _access_of(dependant) -> RouteAccess | None:
    found = getattr(dependant.call, "vicino_access", None)
    if found is not None:
        return found
    for sub in dependant.dependencies:
        found = _access_of(sub)
        if found is not None:
            return found
    return None


def _api_routes(routes):
    """Every APIRoute, also those of included routers (FastAPI ≥ 0.16x keeps them in their router)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and getattr(inner, "routes", None) is not None and inner is not route:
            yield from _api_routes(inner.routes)


def document_access(app) -> None:
    """Every /v1 operation says in its OpenAPI who may call it: `x-vicino-roles`, `x-vicino-device-token`
    and a line of its description."""
    for route in _api_routes(app.routes):
        access = _access_of(route.dependant)
        if access is None:
            continue
        device = {"any": "any device token", "own": "the device token of the customer or device concerned"}
        if access.roles:
            line = (f"**Access**: an API key with the role {' or '.join(access.roles)}"
                    + (f"; or {device[access.devices]}." if access.devices else "."))
        else:
            line = f"**Access**: {device[access.devices]} only."
        route.openapi_extra = {**(route.openapi_extra or {}), "x-vicino-roles": list(access.roles),
                               "x-vicino-device-token": access.devices or "no"}
        # routers are module-level: a second app of the same service must not add the line again
        kept = (route.description or "").split("\n\n**Access**")[0]
        kept = "" if kept.startswith("**Access**") else kept
        route.description = (kept + "\n\n" if kept else "") + line


class AuditMiddleware:
    """Records every write (POST, PUT, PATCH, DELETE) made with a key in the audit trail, after
    the answer (the dependency that authenticated the caller leaves it in `request.state`)."""

    WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.WRITES:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        principal = (scope.get("state") or {}).get("principal")
        audit = getattr(getattr(scope.get("app"), "state", None), "audit", None)
        if principal is None or principal.device is not None or audit is None:
            return
        route = scope.get("route")
        params = scope.get("path_params") or {}
        try:
            # the route's template, never the raw path: a path holds customer ids
            await audit.record(key_id=principal.key_id or "?", method=scope["method"],
                               route=getattr(route, "path", "(no route)"), params=params, status=status,
                               at=time.time())
        except Exception as e:  # the answer is sent; a trail that cannot be written is logged, loudly
            log.error("audit trail not written", extra={"fields": {"key_id": principal.key_id,
                                                                     "path": scope["path"], "error": repr(e)}})
