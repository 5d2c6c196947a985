"""Validating dependencies: who is calling (and with which roles), and the wired service objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from vicino.services.kernel.auth import DeviceClaims, Principal, parse_bearer, require_roles
from vicino.services.kernel.problems import Forbidden, Unauthorized
from vicino.services.runtime.api_keys import mark_access, role_dependency

from ..wiring import GeoContainer


async def container(request: Request) -> GeoContainer:
    # async on purpose: a plain def dependency would run in the thread pool on every request
    return request.app.state.container


ContainerDep = Annotated[GeoContainer, Depends(container)]


async def caller(request: Request, c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Whether a device token is still the device's current one is checked where the device's
    record is read (the location script does it in the same round trip)."""
    p = await c.access.principal(authorization, c.clock.now(), request.scope)
    request.state.principal = p  # for the audit trail
    return p


CallerDep = Annotated[Principal, Depends(caller)]


async def device_claims(c: GeoContainer, authorization: str | None) -> DeviceClaims:
    """The location hot path's check: a device token, verified offline (no Redis round trip).
    Anything else is authenticated as usual (401 when unknown), then refused (403)."""
    token = parse_bearer(authorization)
    if token.startswith("v1."):
        return c.signer.verify(token, c.clock.now())
    await c.access.principal(authorization, c.clock.now())
    raise Forbidden("this endpoint takes a device token (POST /v1/devices issues one)")


async def current_caller(p: CallerDep, c: ContainerDep) -> Principal:
    """The caller, where a device token must still be its device's current one: a device removed or
    registered again (to its owner or to someone else) revokes every token issued before."""
    if p.device is not None:
        reg = await c.devices_repo.get(p.device.device_id)
        if reg is None or reg.token_id != p.device.token_id or reg.customer_id != p.device.customer_id:
            raise Unauthorized("this device token was revoked (the device was removed or registered again)")
    return p


AdminDep = role_dependency(caller, "admin")
OperatorDep = role_dependency(caller, "operator")
AppBackendDep = role_dependency(caller, "app_backend")
SupportDep = role_dependency(caller, "support")
# stores are read by the phones (device tokens), the operator and the analyst
StoreReaderDep = role_dependency(current_caller, "operator", "analyst", devices="any")
# a device's record: the device itself, or the app's server and support
DeviceReaderDep = role_dependency(caller, "app_backend", "support", devices="own")


def _customer_access(*roles: str):
    async def customer_access(customer_id: str, p: CallerDep, c: ContainerDep) -> Principal:
        """A key with one of `roles`, or a current device token of this very customer."""
        require_roles(p, frozenset(roles), devices=True)
        if p.device is None:
            return p
        if p.device.customer_id != customer_id:
            raise Forbidden("a device token may only act for its own customer")
        reg = await c.devices_repo.get(p.device.device_id)
        if reg is None or reg.token_id != p.device.token_id or reg.customer_id != customer_id:
            raise Unauthorized("this device token was replaced by a newer registration")
        return p

    return Annotated[Principal, Depends(mark_access(customer_access, *roles, devices="own"))]


# consent: the customer's own phone, or the retailer's app server (support may read it)
ConsentWriterDep = _customer_access("app_backend")
ConsentReaderDep = _customer_access("app_backend", "support")
