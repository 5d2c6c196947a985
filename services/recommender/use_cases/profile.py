"""The customer profile: one view of a customer across channels, for the app and for a shop
assistant's screen (identifiers, locale and country, consent, devices, channel mix, last
purchases and visits)."""
from __future__ import annotations

from collections import Counter

from vicino.services.kernel.contracts.interactions import CHANNELS
from vicino.services.kernel.problems import NotFound

from ..adapters.customer_repository import CustomerRepository
from ..adapters.published_state import PublishedCustomerState
from ..domain.identity import split_identifier
from .identity import IdentityService

LAST_PURCHASES = 20
LAST_VISITS = 20


class ProfileReader:
    def __init__(self, customers: CustomerRepository, published: PublishedCustomerState,
                 identity: IdentityService) -> None:
        self.customers = customers
        self.published = published
        self.identity = identity

    async def profile(self, customer_id: str) -> dict:
        members = await self.identity.members(customer_id)
        c = members[0]
        history = await self.customers.hot_history(c)
        identifiers = await self.customers.identifiers(c)
        devices = [d for m in members for d in await self.published.devices(m)]
        has_consent = await self.published.has_consent_record(c)
        visits = await self.customers.visits(c, LAST_VISITS)
        attributes = await self.customers.attributes(c)
        if not (history or identifiers or devices or has_consent or visits or attributes or len(members) > 1):
            raise NotFound(f"customer {customer_id!r} is unknown: no interactions, identifiers, devices or consent")
        channels = Counter(h["channel"] for h in history)
        types = Counter(h["type"] for h in history)
        total = sum(channels.values())
        purchases = [h for h in history if h["type"] == "purchase"][:LAST_PURCHASES]
        return {
            "customer_id": c,
            "requested_id": customer_id,
            "merged_from": members[1:],
            "identifiers": [{"kind": k, "value": v} for k, v in map(split_identifier, identifiers)],
            "locale": attributes.get("locale"),
            "country": attributes.get("country"),
            "consent": {**(await self.published.consent(c)), "recorded": has_consent},
            "devices": devices,
            "history": {
                "hot_interactions": total,
                "first_ts": history[-1]["ts"] if history else None,
                "last_ts": history[0]["ts"] if history else None,
                "channel_mix": {ch: {"count": channels[ch], "share": round(channels[ch] / total, 4) if total else 0.0}
                                for ch in CHANNELS},
                "types": dict(sorted(types.items())),
            },
            "last_purchases": purchases,
            "last_visits": visits,
            "redeemed_offers": sorted(await self.customers.redeemed(c)),
        }

    async def history(self, customer_id: str, *, limit: int, before: float | None, channel: str | None,
                      type_: str | None) -> dict:
        """Paged by `before` to the millisecond, the hot history's own order (its scores are whole
        milliseconds), so that `next_before`, shown as RFC 3339 to the millisecond, is exact."""
        c = await self.identity.canonical(customer_id)
        rows = await self.customers.hot_history(c)
        before_ms = None if before is None else round(before * 1000)
        picked = [h for h in rows
                  if (before_ms is None or int(h["ts"] * 1000) < before_ms)
                  and (channel is None or h["channel"] == channel) and (type_ is None or h["type"] == type_)][:limit]
        return {"customer_id": c, "interactions": picked,
                "next_before": int(picked[-1]["ts"] * 1000) / 1000 if len(picked) == limit else None}
