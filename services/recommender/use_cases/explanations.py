"""Why did (or didn't) a customer get a push at a visit: the decisions as recorded, with each
campaign's outcome and name, the offer, the rendered message and the delivery's status.

The decisions are the customer's last `DECISIONS_KEPT` (adapters.decision_repository), kept as
long as the KPIs keep theirs; a visit id leads to its customer through the visit index.
"""
from __future__ import annotations

from vicino.services.kernel.contracts.decisions import DecisionV1
from vicino.services.kernel.problems import NotFound
from vicino.services.kernel.times import rfc3339

from ..adapters.catalog_repository import CatalogRepository
from ..adapters.decision_repository import DECISIONS_KEPT, DecisionRepository
from ..adapters.push_deliveries import PushDeliveryRecords
from .campaigns import CampaignBook
from .identity import CanonicalIds


class DecisionExplanations:
    def __init__(self, decisions: DecisionRepository, identity: CanonicalIds, campaigns: CampaignBook,
                 catalog: CatalogRepository, deliveries: PushDeliveryRecords) -> None:
        self.decisions = decisions
        self.identity = identity
        self.campaigns = campaigns
        self.catalog = catalog
        self.deliveries = deliveries

    async def for_visit(self, visit_id: str) -> dict:
        owner = await self.decisions.customer_of_visit(visit_id)
        if owner is None:
            raise NotFound(f"no decision is known for visit {visit_id!r} (none was made, or it is older than the "
                           "decisions kept)")
        customer = await self.identity.canonical(owner)
        found = [d for d in await self.decisions.recent_decisions(customer, DECISIONS_KEPT, None)
                 if d.visit_id == visit_id]
        if not found:
            raise NotFound(f"no decision is kept for visit {visit_id!r}")
        found.sort(key=lambda d: d.decided_at)
        first = found[0]
        store = await self.catalog.store_feature(first.store_id)
        names = await self._names()
        return {"visit_id": visit_id, "customer_id": customer, "device_id": first.device_id,
                "store": {"store_id": first.store_id,
                          "name": ((store or {}).get("properties") or {}).get("name"),
                          "brand": ((store or {}).get("properties") or {}).get("brand")},
                "decisions": [await self._explain(d, names) for d in found]}

    async def for_customer(self, customer_id: str, limit: int, before: float | None) -> dict:
        customer = await self.identity.canonical(customer_id)
        found = await self.decisions.recent_decisions(customer, limit, before)
        names = await self._names()
        return {"customer_id": customer, "decisions": [await self._explain(d, names) for d in found],
                "next_before": rfc3339(found[-1].decided_at) if len(found) == limit else None}

    async def _names(self) -> dict[str, str]:
        """campaign_id -> name, read once per answer (not once per campaign of each decision)."""
        _, stored = await self.campaigns.repo.all()
        names = {c.campaign_id: c.spec.name for c in stored}
        if self.campaigns.default is not None:
            names.setdefault(self.campaigns.default.campaign_id, self.campaigns.default.spec.name)
        return names

    async def _explain(self, d: DecisionV1, names: dict[str, str]) -> dict:
        delivery = None
        if d.job_id is not None:
            delivery = await self.deliveries.of_visit(d.customer_id, d.store_id, d.visit_id)
            if delivery is not None:
                delivery = {**delivery, "created_at": _t(delivery.get("created_at")),
                            "opened_at": _t(delivery.get("opened_at")),
                            "history": [{**h, "at": _t(h.get("at"))} for h in delivery.get("history") or []]}
        return {
            "decision_id": d.decision_id, "visit_id": d.visit_id, "store_id": d.store_id, "device_id": d.device_id,
            "event": {"event_id": d.event_id, "type": d.event_type, "ts": rfc3339(d.ts)},
            "decided_at": rfc3339(d.decided_at), "outcome": d.outcome, "reason": d.reason, "holdout": d.holdout,
            "campaign_id": d.campaign_id,
            "campaigns": [{**c.model_dump(), "name": names.get(c.campaign_id)} for c in d.campaigns],
            "offer": None if d.offer_id is None else {
                "offer_id": d.offer_id, "score": d.score, "price": d.price, "currency": d.currency,
                "rank_reason": d.rank_reason, "model_version": d.model_version},
            "message": None if d.message is None else d.message.model_dump(),
            "job_id": d.job_id, "delivery": delivery,
        }


def _t(v):
    return None if v is None else rfc3339(float(v))
