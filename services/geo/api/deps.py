"""Validating dependencies: who is calling, and the wired service objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from vicino.services.kernel.auth import Principal, bearer_principal, require_admin
from vicino.services.kernel.problems import Forbidden, Unauthorized

from ..wiring import GeoContainer


async def container(request: Request) -> GeoContainer:
    # async on purpose: a plain def dependency would run in the thread pool on every request
    return request.app.state.container


ContainerDep = Annotated[GeoContainer, Depends(container)]


def authenticate(c: GeoContainer, authorization: str | None) -> Principal:
    """Whether a device token is still the device's current one is checked where the device's
    record is read (the location script does it in the same round trip)."""
    return bearer_principal(authorization, c.settings.admin_token, c.signer, c.clock.now())


async def caller(c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return authenticate(c, authorization)


CallerDep = Annotated[Principal, Depends(caller)]


async def admin(p: CallerDep) -> Principal:
    return require_admin(p)


AdminDep = Annotated[Principal, Depends(admin)]


async def customer_access(customer_id: str, p: CallerDep, c: ContainerDep) -> Principal:
    """Admin, or a current device token of this very customer."""
    if p.admin:
        return p
    assert p.device is not None
    if p.device.customer_id != customer_id:
        raise Forbidden("a device token may only act for its own customer")
    reg = await c.devices_repo.get(p.device.device_id)
    if reg is None or reg.token_id != p.device.token_id or reg.customer_id != customer_id:
        raise Unauthorized("this device token was replaced by a newer registration")
    return p


CustomerAccessDep = Annotated[Principal, Depends(customer_access)]

