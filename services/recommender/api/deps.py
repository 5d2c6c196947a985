"""Validating dependencies: who is calling, whether they may act for a customer, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.kernel.auth import ADMIN, Principal, is_admin_token, parse_bearer
from services.kernel.problems import Forbidden, Unauthorized

from ..wiring import RecommenderContainer


async def container(request: Request) -> RecommenderContainer:
    # async on purpose: a plain def dependency would run in the thread pool on every request
    return request.app.state.container


ContainerDep = Annotated[RecommenderContainer, Depends(container)]


async def caller(c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Admin token, or a device token that is still its device's current one (checked against
    the registration the geo service publishes, so a replaced or removed phone is locked out)."""
    token = parse_bearer(authorization)
    if is_admin_token(token, c.settings.admin_token):
        return ADMIN
    if not token.startswith("v1."):
        raise Unauthorized("unknown bearer token")
    claims = c.signer.verify(token, c.clock.now())
    if not await c.devices.is_current(claims.device_id, claims.customer_id, claims.token_id):
        raise Unauthorized("this device token was replaced by a newer registration or the device was removed")
    return Principal(admin=False, device=claims)


CallerDep = Annotated[Principal, Depends(caller)]


async def admin(p: CallerDep) -> Principal:
    if not p.admin:
        raise Forbidden("this endpoint needs the admin token")
    return p


AdminDep = Annotated[Principal, Depends(admin)]


async def customer_access(customer_id: str, p: CallerDep, c: ContainerDep) -> Principal:
    """Admin, or a device token of this customer (or of a customer since merged into this one)."""
    if p.admin:
        return p
    assert p.device is not None
    if p.device.customer_id == customer_id:
        return p
    if await c.identity.canonical(p.device.customer_id) == await c.identity.canonical(customer_id):
        return p
    raise Forbidden("a device token may only act for its own customer")


CustomerAccessDep = Annotated[Principal, Depends(customer_access)]

