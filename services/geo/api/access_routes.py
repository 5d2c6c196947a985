"""API keys and the audit trail (admin only). Served by the geo service, the stack's base URL;
the keys are honoured by every service (they share the key store in Redis)."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vicino.services.kernel.problems import InvalidInput
from vicino.services.kernel.roles import KEY_ID_PATTERN, ROLES, UnknownRole

from .deps import AdminDep, ContainerDep
from .schemas import BODY_PROBLEMS, PROBLEMS

router = APIRouter(prefix="/v1", responses=PROBLEMS)
MAX_AUDIT = 1000


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")]
    roles: list[str] = Field(min_length=1, max_length=len(ROLES), description=f"any of {', '.join(ROLES)}")


class KeyOut(BaseModel):
    key_id: str
    name: str
    roles: list[str]
    created_at: float
    revoked_at: float | None = None


class NewKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a keyed hash")


class AuditEntryOut(BaseModel):
    key_id: str
    method: str
    route: str = Field(description="the route's template, e.g. /v1/stores/{store_id}")
    target: str | None = Field(description="its path parameters; a person's id as `~` and a keyed hash")
    status: int
    at: float


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("/keys", tags=["access"], status_code=201, summary="create an API key with roles (shown once)",
             responses={**BODY_PROBLEMS, 201: {"model": NewKeyOut}})
async def create_key(_: AdminDep, body: KeyIn, c: ContainerDep) -> Response:
    try:
        rec, key = await c.access.keys.create(body.name, body.roles, c.clock.now())
    except UnknownRole as e:
        raise InvalidInput(str(e), errors=[{"field": "roles", "message": str(e)}]) from None
    return _json({**rec.public(), "key": key}, 201)


@router.get("/keys", tags=["access"], summary="every API key, revoked ones included (never a secret)",
            responses={200: {"model": list[KeyOut]}})
async def list_keys(_: AdminDep, c: ContainerDep) -> Response:
    return _json([r.public() for r in await c.access.keys.list()])


@router.delete("/keys/{key_id}", tags=["access"], summary="revoke a key: refused at once by every replica",
               responses={200: {"model": KeyOut}})
async def revoke_key(key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN)], _: AdminDep, c: ContainerDep) -> Response:
    return _json((await c.access.keys.revoke(key_id, c.clock.now())).public())


def _instant(v: str | None, name: str, default: float) -> float:
    if v is None:
        return default
    try:
        t = float(v)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"{name}: not RFC 3339 nor epoch seconds: {v!r}",
                               errors=[{"field": name, "message": "not RFC 3339 nor epoch seconds"}]) from None
        if parsed.tzinfo is None:
            raise InvalidInput(f"{name}: a time needs an offset (Z or +01:00): {v!r}",
                               errors=[{"field": name, "message": "no offset"}])
        t = parsed.timestamp()
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise InvalidInput(f"{name}: out of range: {v!r}", errors=[{"field": name, "message": "out of range"}])
    return t


Instant = Annotated[str | None, Query(max_length=40, description="RFC 3339 with an offset, or epoch seconds")]


@router.get("/audit", tags=["access"], summary="writes made with keys and the admin token, oldest first",
            responses={200: {"model": list[AuditEntryOut]}})
async def audit(_: AdminDep, c: ContainerDep, from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
                to: Instant = None, key_id: Annotated[str | None, Query(max_length=60)] = None,
                customer_id: Annotated[str | None, Query(max_length=128, description="only writes about this "
                                                         "customer (matched through its keyed hash)")] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_AUDIT)] = 100) -> Response:
    now = c.clock.now()
    start = _instant(from_, "from", now - 86_400)
    end = _instant(to, "to", now)
    if end < start:
        raise InvalidInput("`to` is before `from`", errors=[{"field": "to", "message": "before from"}])
    entries = await c.audit.read(start, end, key_id, MAX_AUDIT if customer_id else limit)
    if customer_id:
        mark = f"customer_id={c.audit.pseudonym(customer_id)}"
        entries = [e for e in entries if mark in (e["target"] or "")][:limit]
    return _json(entries)
