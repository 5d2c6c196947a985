"""API keys and the audit trail (admin only). Served by the geo service, the stack's base URL;
the keys are honoured by every service (they share the key store in Redis)."""
from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from vicino.services.kernel.problems import InvalidInput
from vicino.services.kernel.roles import KEY_ID_PATTERN, ROLES, KeyRecord, UnknownRole
from vicino.services.kernel.times import InstantOut, rfc3339_fields
from vicino.services.runtime.http_edge import INSTANT_PARAM, instant_param

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
    created_at: InstantOut
    revoked_at: InstantOut | None = None


class NewKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once, stored only as a keyed hash")


class AuditEntryOut(BaseModel):
    key_id: str
    method: str
    route: str = Field(description="the route's template, e.g. /v1/stores/{store_id}")
    target: str | None = Field(description="its path parameters; a person's id as `~` and a keyed hash")
    status: int
    at: InstantOut


def _json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _key_out(rec: KeyRecord) -> dict:
    return rfc3339_fields(rec.public(), "created_at", "revoked_at")


@router.post("/keys", tags=["access"], status_code=201, summary="create an API key with roles (shown once)",
             responses={**BODY_PROBLEMS, 201: {"model": NewKeyOut}})
async def create_key(_: AdminDep, body: KeyIn, c: ContainerDep) -> Response:
    try:
        rec, key = await c.access.keys.create(body.name, body.roles, c.clock.now())
    except UnknownRole as e:
        raise InvalidInput(str(e), errors=[{"field": "roles", "message": str(e)}]) from None
    return _json({**_key_out(rec), "key": key}, 201)


@router.get("/keys", tags=["access"], summary="every API key, revoked ones included (never a secret)",
            responses={200: {"model": list[KeyOut]}})
async def list_keys(_: AdminDep, c: ContainerDep) -> Response:
    return _json([_key_out(r) for r in await c.access.keys.list()])


@router.delete("/keys/{key_id}", tags=["access"], summary="revoke a key: refused at once by every replica",
               responses={200: {"model": KeyOut}})
async def revoke_key(key_id: Annotated[str, Path(pattern=KEY_ID_PATTERN)], _: AdminDep, c: ContainerDep) -> Response:
    return _json(_key_out(await c.access.keys.revoke(key_id, c.clock.now())))


Instant = Annotated[str | None, Query(max_length=40, description=INSTANT_PARAM)]


@router.get("/audit", tags=["access"], summary="writes made with keys and the admin token, oldest first",
            responses={200: {"model": list[AuditEntryOut]}})
async def audit(_: AdminDep, c: ContainerDep,
                from_: Annotated[str | None, Query(alias="from", max_length=40, description=INSTANT_PARAM)] = None,
                to: Instant = None, key_id: Annotated[str | None, Query(max_length=60)] = None,
                customer_id: Annotated[str | None, Query(max_length=128, description="only writes about this "
                                                         "customer (matched through its keyed hash)")] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_AUDIT)] = 100) -> Response:
    now = c.clock.now()
    start = instant_param(from_, "from", now - 86_400)
    end = instant_param(to, "to", now)
    if end < start:
        raise InvalidInput("`to` is before `from`", errors=[{"field": "query.to", "message": "before from"}])
    entries = await c.audit.read(start, end, key_id, MAX_AUDIT if customer_id else limit)
    if customer_id:
        mark = f"customer_id={c.audit.pseudonym(customer_id)}"
        entries = [e for e in entries if mark in (e["target"] or "")][:limit]
    return _json([rfc3339_fields(e, "at") for e in entries])
