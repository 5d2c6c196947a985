"""Customers brought in from a CRM (`POST /v1/customers:batch`, `vicino customers import`):
identifiers linked, consent set at geo, locale and country kept, item by item, so that one bad
item never costs the others.

The steps, in an order that keeps a rejected item from changing anything: judge every item,
link identifiers (an identifier of another customer rejects the item: nothing of it is linked,
no one is merged), then the consent of the linked ones at geo in one call (audited there like
every consent change), then their attributes. A whole batch that fails part-way (geo away: a
503) is safe to send again: linking the same identifier to the same customer, setting the same
consent and attributes, changes nothing more.
"""
from __future__ import annotations

from vicino.services.kernel.clock import Clock

from ..adapters.customer_repository import CustomerRepository
from ..adapters.geo_client import GeoClient
from ..domain.customer_records import CustomerRecord, judge_customer
from .identity import IdentityService

CONSENT_SOURCE = "customer-batch"  # the `source` of these changes in geo's consent trail
GEO_BATCH = 1000


def _rejected(index: int, customer_id: str | None, errors: list[dict]) -> dict:
    return {"index": index, "customer_id": customer_id, "status": "rejected", "errors": errors}


class CustomerBatch:
    def __init__(self, customers: CustomerRepository, identity: IdentityService, geo: GeoClient, clock: Clock) -> None:
        self.customers = customers
        self.identity = identity
        self.geo = geo
        self.clock = clock

    async def upsert(self, items: list) -> dict:
        """{created, updated, rejected, results: [{index, customer_id, status, errors?}]}."""
        results: list[dict | None] = [None] * len(items)
        accepted: list[tuple[int, CustomerRecord]] = []
        seen: set[str] = set()
        for n, raw in enumerate(items):
            given = raw.get("customer_id") if isinstance(raw, dict) else None
            judged = judge_customer(raw)
            if isinstance(judged, list):
                results[n] = _rejected(n, given if isinstance(given, str) else None, judged)
            elif judged.customer_id in seen:
                results[n] = _rejected(n, judged.customer_id, [{"field": "customer_id", "message":
                                                                "the same customer appears earlier in this batch"}])
            else:
                seen.add(judged.customer_id)
                accepted.append((n, judged))
        ids = [r.customer_id for _, r in accepted]
        known = await self.customers.known(ids)
        links = await self.identity.link_batch([(r.customer_id, r.identifiers) for _, r in accepted])
        linked: list[tuple[int, CustomerRecord, str, bool]] = []
        for (n, record), link, was_known in zip(accepted, links, known):
            if link.customer_id is None:
                results[n] = _rejected(n, record.customer_id, link.errors)
            else:
                linked.append((n, record, link.customer_id, was_known))
        await self._consent(linked, results)
        now = self.clock.now()
        await self.customers.set_attributes([(target, record.attributes) for n, record, target, _ in linked
                                             if record.attributes and results[n] is None], now)
        for n, record, _, was_known in linked:
            if results[n] is None:
                results[n] = {"index": n, "customer_id": record.customer_id,
                              "status": "updated" if was_known else "created"}
        counts = {s: sum(1 for r in results if r["status"] == s) for s in ("created", "updated", "rejected")}
        return {**counts, "results": results}

    async def _consent(self, linked: list[tuple[int, CustomerRecord, str, bool]], results: list) -> None:
        """Geo keeps consent per customer id: a customer merged away gets the change under its
        own id too (decisions ask both ids, kernel.contracts.customer_state)."""
        changes: list[tuple[int, dict]] = []
        for n, record, target, _ in linked:
            if record.consent:
                for customer_id in dict.fromkeys((target, record.customer_id)):
                    changes.append((n, {"customer_id": customer_id, "consent": record.consent,
                                        "source": CONSENT_SOURCE}))
        for start in range(0, len(changes), GEO_BATCH):
            chunk = changes[start:start + GEO_BATCH]
            for (n, change), answer in zip(chunk, await self.geo.set_consents([c for _, c in chunk])):
                if answer["status"] != "ok" and results[n] is None:
                    # judged alike here, so not expected; the identifiers stay linked (a retry is safe)
                    results[n] = _rejected(n, change["customer_id"], [
                        {"field": f"consent.{e['field']}".rstrip("."), "message": f"geo: {e['message']}"}
                        for e in answer.get("errors") or [{"field": "", "message": "refused"}]])
