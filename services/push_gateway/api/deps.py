"""Validating dependencies: who is calling, the delivery they name, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from services.kernel.auth import ADMIN, Principal, is_admin_token, parse_bearer
from services.kernel.problems import Forbidden, NotFound, Unauthorized

from ..domain.delivery import DeliveryRecord
from ..wiring import PushContainer


async def container(request: Request) -> PushContainer:
    return request.app.state.container


ContainerDep = Annotated[PushContainer, Depends(container)]


async def caller(c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Admin token, or a device token that is still its device's current one (the registration
    that the geo service publishes)."""
    token = parse_bearer(authorization)
    if is_admin_token(token, c.settings.admin_token):
        return ADMIN
    if not token.startswith("v1."):
        raise Unauthorized("unknown bearer token")
    claims = c.signer.verify(token, c.clock.now())
    reg = await c.repo.registration(claims.device_id)
    if reg is None or reg.get("token_id") != claims.token_id:
        raise Unauthorized("this device token was replaced by a newer registration or the device was removed")
    return Principal(admin=False, device=claims)


CallerDep = Annotated[Principal, Depends(caller)]


async def admin(p: CallerDep) -> Principal:
    if not p.admin:
        raise Forbidden("this endpoint needs the admin token")
    return p


AdminDep = Annotated[Principal, Depends(admin)]

DeliveryIdPath = Annotated[str, Path(pattern=r"^dlv[0-9]{3}[0-9a-f]{24}$",
                                     description="as in the push's data payload")]


async def delivery(delivery_id: DeliveryIdPath, c: ContainerDep) -> DeliveryRecord:
    rec = await c.repo.get(delivery_id)
    if rec is None:
        raise NotFound(f"no delivery {delivery_id!r} (never queued, past retention, or erased)")
    return rec


DeliveryDep = Annotated[DeliveryRecord, Depends(delivery)]


async def recipient_or_admin(rec: DeliveryDep, p: CallerDep) -> Principal:
    if p.admin or p.device.device_id == rec.device_id:
        return p
    raise Forbidden("a device token may only read the deliveries sent to that device")


RecipientOrAdminDep = Annotated[Principal, Depends(recipient_or_admin)]


async def recipient(rec: DeliveryDep, p: CallerDep) -> Principal:
    if p.admin:
        raise Forbidden("an open is reported by the recipient's device token, not the admin token")
    if p.device.device_id != rec.device_id:
        raise Forbidden("this delivery was sent to another device")
    return p


RecipientDep = Annotated[Principal, Depends(recipient)]
