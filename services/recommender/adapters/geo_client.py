"""The geo service's HTTP API, as the recommender uses it: geo owns consent and devices, so a
merge changes consent through it and an erasure asks it to remove the location data."""
from __future__ import annotations

import httpx

from vicino.services.kernel.contracts.customer_state import CONSENT_FIELDS
from vicino.services.kernel.problems import Unavailable
from vicino.services.runtime.service_http import ServiceClient


class GeoClient(ServiceClient):
    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        super().__init__(http, key, "geo")

    async def set_consent(self, customer_id: str, consent: dict) -> None:
        r = await self._call("PUT", f"/v1/customers/{customer_id}/consent",
                             json={f: bool(consent[f]) for f in CONSENT_FIELDS})
        if r.status_code != 200:
            raise Unavailable(f"the geo service refused the consent of {customer_id!r}: {r.status_code} {r.text[:200]}")

    async def set_consents(self, items: list[dict]) -> list[dict]:
        """Geo's batch consent write (`POST /v1/consents:batch`, up to 1,000 items of
        {customer_id, consent: {purpose: bool, ...}, source}): its per-item results, in order."""
        r = await self._call("POST", "/v1/consents:batch", json={"items": items})
        if r.status_code != 200:
            raise Unavailable(f"the geo service refused a consent batch: {r.status_code} {r.text[:200]}")
        return r.json()["results"]

    async def erase_location_data(self, customer_id: str) -> dict:
        r = await self._call("DELETE", f"/v1/customers/{customer_id}/location-data")
        if r.status_code != 200:
            raise Unavailable(f"the geo service refused to erase {customer_id!r}: {r.status_code} {r.text[:200]}")
        return r.json()
