"""Validating dependencies: who is calling, whether they may act for a customer, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from vicino.services.kernel.auth import REPLACED_TOKEN, Principal, bearer_principal, require_admin
from vicino.services.kernel.problems import Forbidden, Unauthorized

from ..wiring import RecommenderContainer


async def container(request: Request) -> RecommenderContainer:
    # async on purpose: a plain def dependency would run in the thread pool on every request
    return request.app.state.container


ContainerDep = Annotated[RecommenderContainer, Depends(container)]


async def caller(c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Admin token, or a device token that is still its device's current one (checked against
    the registration the geo service publishes, so a replaced or removed phone is locked out)."""
    p = bearer_principal(authorization, c.settings.admin_token, c.signer, c.clock.now())
    if p.device and not await c.devices.is_current(p.device.device_id, p.device.customer_id, p.device.token_id):
        raise Unauthorized(REPLACED_TOKEN)
    return p


CallerDep = Annotated[Principal, Depends(caller)]


async def admin(p: CallerDep) -> Principal:
    return require_admin(p)


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

