"""Validating dependencies: who is calling, the delivery they name, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from vicino.services.kernel.auth import REPLACED_TOKEN, Principal, bearer_principal, require_admin
from vicino.services.kernel.problems import Forbidden, NotFound, Unauthorized

from ..domain.delivery import DeliveryRecord
from ..wiring import PushContainer


async def container(request: Request) -> PushContainer:
    return request.app.state.container


ContainerDep = Annotated[PushContainer, Depends(container)]


async def caller(c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """Admin token, or a device token that is still its device's current one (the registration
    that the geo service publishes)."""
    p = bearer_principal(authorization, c.settings.admin_token, c.signer, c.clock.now())
    if p.device:
        reg = await c.repo.registration(p.device.device_id)
        if reg is None or reg.get("token_id") != p.device.token_id:
            raise Unauthorized(REPLACED_TOKEN)
    return p


CallerDep = Annotated[Principal, Depends(caller)]


async def admin(p: CallerDep) -> Principal:
    return require_admin(p)


AdminDep = Annotated[Principal, Depends(admin)]

DeliveryIdPath = Annotated[str, Path(pattern=r"^dlv[0-9]{3}[0-9a-f]{24}$",
                                     description="as in the push's data payload")]


async def delivery(delivery_id: DeliveryIdPath, c: ContainerDep) -> DeliveryRecord:
    rec = await c.repo.get(delivery_id)
    if rec is None:
        raise NotFound(f"no delivery {delivery_id!r} (never queued, past retention, or erased)")
    return rec


DeliveryDep = Annotated[DeliveryRecord, Depends(delivery)]


# the caller is checked before the delivery is looked up: no answer says whether an id exists
# to someone without a valid token
async def recipient_or_admin(p: CallerDep, rec: DeliveryDep) -> Principal:
    if p.admin or p.device.device_id == rec.device_id:
        return p
    raise Forbidden("a device token may only read the deliveries sent to that device")


RecipientOrAdminDep = Annotated[Principal, Depends(recipient_or_admin)]


async def recipient(p: CallerDep, rec: DeliveryDep) -> Principal:
    if p.admin:
        raise Forbidden("an open is reported by the recipient's device token, not the admin token")
    if p.device.device_id != rec.device_id:
        raise Forbidden("this delivery was sent to another device")
    return p


RecipientDep = Annotated[Principal, Depends(recipient)]
