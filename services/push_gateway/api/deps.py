"""Validating dependencies: who is calling, the delivery they name, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from vicino.services.kernel.auth import REPLACED_TOKEN, Principal, require_roles
from vicino.services.kernel.contracts.customer_state import accepts_device_token
from vicino.services.runtime.api_keys import RouteAccess, mark_access, role_dependency
from vicino.services.kernel.problems import Forbidden, NotFound, Unauthorized

from ..domain.delivery import DeliveryRecord
from ..wiring import PushContainer


async def container(request: Request) -> PushContainer:
    return request.app.state.container


ContainerDep = Annotated[PushContainer, Depends(container)]


async def caller(request: Request, c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """A key (admin token or API key), or a device token that is still its device's (the current
    one, or the one a refresh replaced, within its grace: the registration that the geo service
    publishes)."""
    now = c.clock.now()
    p = await c.access.principal(authorization, now, request.scope)
    if p.device:
        reg = await c.repo.registration(p.device.device_id)
        if reg is None or not accepts_device_token(reg, p.device.token_id, now):
            raise Unauthorized(REPLACED_TOKEN)
    request.state.principal = p  # for the audit trail
    return p


CallerDep = Annotated[Principal, Depends(caller)]
AdminDep = role_dependency(caller, "admin")
SupportDep = role_dependency(caller, "support")

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
async def _sent_to_this_owner(c: PushContainer, p: Principal, rec: DeliveryRecord) -> bool:
    """The device token's device and customer are the delivery's: a phone that changed hands
    sees nothing of what was sent to its previous owner. The delivery names the canonical
    customer; the registration may name an id merged into it since."""
    if p.device.device_id != rec.device_id:
        return False
    return (p.device.customer_id == rec.customer_id
            or await c.repo.canonical(p.device.customer_id) == await c.repo.canonical(rec.customer_id))


async def recipient_or_support(p: CallerDep, rec: DeliveryDep, c: ContainerDep) -> Principal:
    require_roles(p, frozenset({"support"}), devices=True)
    if p.device is None or await _sent_to_this_owner(c, p, rec):
        return p
    raise Forbidden("a device token may only read the deliveries sent to that device and its owner")


RecipientOrSupportDep = Annotated[Principal, Depends(mark_access(recipient_or_support, "support", devices="own"))]


async def recipient(p: CallerDep, rec: DeliveryDep, c: ContainerDep) -> Principal:
    if p.device is None:
        raise Forbidden("an open is reported by the recipient's device token, not by a key")
    if not await _sent_to_this_owner(c, p, rec):
        raise Forbidden("this delivery was sent to another device or its previous owner")
    return p


recipient.vicino_access = RouteAccess((), "own")
RecipientDep = Annotated[Principal, Depends(recipient)]
