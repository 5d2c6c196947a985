"""Validating dependencies: who is calling, whether they may act for a customer, the wired objects."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from vicino.services.kernel.auth import REPLACED_TOKEN, Principal, require_roles
from vicino.services.runtime.api_keys import mark_access, role_dependency
from vicino.services.kernel.problems import Forbidden, Unauthorized

from ..wiring import RecommenderContainer


async def container(request: Request) -> RecommenderContainer:
    # async on purpose: a plain def dependency would run in the thread pool on every request
    return request.app.state.container


ContainerDep = Annotated[RecommenderContainer, Depends(container)]


async def caller(request: Request, c: ContainerDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """A key (admin token or API key), or a device token that is still its device's (the current
    one, or the one a refresh replaced, within its grace: checked against the registration the geo
    service publishes, so a replaced or removed phone is locked out)."""
    now = c.clock.now()
    p = await c.access.principal(authorization, now, request.scope)
    if p.device and not await c.devices.is_current(p.device.device_id, p.device.customer_id, p.device.token_id, now):
        raise Unauthorized(REPLACED_TOKEN)
    request.state.principal = p  # for the audit trail
    return p


CallerDep = Annotated[Principal, Depends(caller)]
AdminDep = role_dependency(caller, "admin")
OperatorDep = role_dependency(caller, "operator")
AnalystDep = role_dependency(caller, "analyst")
CatalogReaderDep = role_dependency(caller, "operator", "analyst")
AppBackendDep = role_dependency(caller, "app_backend")
SupportDep = role_dependency(caller, "support")
IdentifierReaderDep = role_dependency(caller, "app_backend", "support")
# an offer or a store's offers: the phones, and whoever manages or studies the catalogue
OfferReaderDep = role_dependency(caller, "operator", "analyst", "app_backend", devices="any")
ModelReaderDep = role_dependency(caller, "operator", "analyst", devices="any")
ModelRegistryReaderDep = role_dependency(caller, "operator", "analyst")  # the kept versions: not for phones
# interactions: the retailer's systems (app_backend), or a phone for its own customer
InteractionWriterDep = role_dependency(caller, "app_backend", devices="own")


def _customer_access(*roles: str):
    async def customer_access(customer_id: str, p: CallerDep, c: ContainerDep) -> Principal:
        """A key with one of `roles`, or a device token of this customer (or of a customer since
        merged into this one)."""
        require_roles(p, frozenset(roles), devices=True)
        if p.device is None or p.device.customer_id == customer_id:
            return p
        if await c.identity.canonical(p.device.customer_id) == await c.identity.canonical(customer_id):
            return p
        raise Forbidden("a device token may only act for its own customer")

    return Annotated[Principal, Depends(mark_access(customer_access, *roles, devices="own"))]


ProfileReaderDep = _customer_access("support")
CustomerOffersDep = _customer_access("app_backend", "support")
