"""Validating dependencies: who is calling (and with which roles), and the wired service objects."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Request

from vicino.services.kernel.auth import REPLACED_TOKEN, DeviceClaims, Principal, parse_bearer, require_roles
from vicino.services.kernel.ids import CLIENT_ID_PATTERN
from vicino.services.kernel.problems import Forbidden, NotFound, Unauthorized
from vicino.services.runtime.api_keys import RouteAccess, mark_access, role_dependency

from ..adapters.device_repository import Registration
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


def _accepted(reg: Registration | None, claims: DeviceClaims, now: float) -> bool:
    """A device token still opens its device's routes: the registration's current token, or the one
    a refresh replaced within its grace. A device removed or registered again (to its owner or to
    someone else) revokes every token issued before."""
    return reg is not None and reg.customer_id == claims.customer_id and reg.accepts(claims.token_id, now)


async def current_caller(p: CallerDep, c: ContainerDep) -> Principal:
    """The caller, where a device token must still be its device's (see `_accepted`)."""
    if p.device is not None:
        reg = await c.devices_repo.get(p.device.device_id)
        if not _accepted(reg, p.device, c.clock.now()):
            raise Unauthorized(REPLACED_TOKEN)
    return p


AdminDep = role_dependency(caller, "admin")
OperatorDep = role_dependency(caller, "operator")
AppBackendDep = role_dependency(caller, "app_backend")
SupportDep = role_dependency(caller, "support")
# stores are read by the phones (device tokens), the operator and the analyst
StoreReaderDep = role_dependency(current_caller, "operator", "analyst", devices="any")

DeviceId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN)]


@dataclass(frozen=True, slots=True)
class DeviceCaller:
    """Who acts on the device of the path, and that device's registration as read for the check."""
    principal: Principal
    registration: Registration


def _device_access(*roles: str):
    async def device_access(device_id: DeviceId, p: CallerDep, c: ContainerDep) -> DeviceCaller:
        """A key with one of `roles`, or a device token of this very device that it still accepts
        (`_accepted`); the device must be registered."""
        require_roles(p, frozenset(roles), devices=True)
        if p.device is not None and p.device.device_id != device_id:
            raise Forbidden(f"a device token may act only for its own device (this one is {p.device.device_id!r}'s)")
        reg = await c.devices_repo.get(device_id)
        if p.device is not None and not _accepted(reg, p.device, c.clock.now()):
            raise Unauthorized(REPLACED_TOKEN)
        if reg is None:
            raise NotFound(f"device {device_id!r} is not registered")
        return DeviceCaller(p, reg)

    return Annotated[DeviceCaller, Depends(mark_access(device_access, *roles, devices="own"))]


# a device's record: the device itself, or the app's server and support
DeviceReaderDep = _device_access("app_backend", "support")
# what the app does for its own device (a push token, logging out): the device, or the app's server
DeviceOwnerDep = _device_access("app_backend")
# the regions a device is to monitor: the device, or support (what would this phone be told here?)
RegionReaderDep = _device_access("support")


async def own_device_token(device_id: DeviceId, p: CallerDep) -> DeviceClaims:
    """The device of the path itself, with its device token (a key gets 403: the app's server
    registers the device again instead)."""
    if p.device is None:
        raise Forbidden("only the device itself refreshes its token, with its current device token; an app server "
                        "registers the device again (POST /v1/devices) for a new one")
    if p.device.device_id != device_id:
        raise Forbidden(f"a device token may act only for its own device (this one is {p.device.device_id!r}'s)")
    return p.device


own_device_token.vicino_access = RouteAccess((), "own")
OwnDeviceTokenDep = Annotated[DeviceClaims, Depends(own_device_token)]


def _customer_access(*roles: str):
    async def customer_access(customer_id: str, p: CallerDep, c: ContainerDep) -> Principal:
        """A key with one of `roles`, or a current device token of this very customer."""
        require_roles(p, frozenset(roles), devices=True)
        if p.device is None:
            return p
        if p.device.customer_id != customer_id:
            raise Forbidden("a device token may only act for its own customer")
        reg = await c.devices_repo.get(p.device.device_id)
        if not _accepted(reg, p.device, c.clock.now()):
            raise Unauthorized(REPLACED_TOKEN)
        return p

    return Annotated[Principal, Depends(mark_access(customer_access, *roles, devices="own"))]


# consent: the customer's own phone, or the retailer's app server (support may read it)
ConsentWriterDep = _customer_access("app_backend")
ConsentReaderDep = _customer_access("app_backend", "support")
