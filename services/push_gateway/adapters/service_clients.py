"""The other services' HTTP APIs, as the gateway uses them: the geo service owns device
registrations (so it removes a push token a provider declared dead), the recommender owns the
interaction history (so an opened push is recorded there)."""
from __future__ import annotations

import httpx

from vicino.services.kernel.problems import Unavailable
from vicino.services.runtime.service_http import ServiceClient


class GeoDevices(ServiceClient):
    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        super().__init__(http, key, "geo")

    async def revoke_push_token(self, device_id: str, push_token_sha256: str, reason: str) -> bool:
        """Removes the token from the device if it is still the device's token (a newer one, from
        a re-registration, stays). True if removed; False if already gone or replaced."""
        r = await self._call("POST", f"/v1/devices/{device_id}/push-token/revocations",
                             json={"push_token_sha256": push_token_sha256, "reason": reason[:200]})
        if r.status_code == 404:
            return False  # the device is gone: so is its token
        if r.status_code != 200:
            raise Unavailable(f"geo refused the token revocation: {r.status_code} {r.text[:200]}")
        return bool(r.json().get("revoked"))


class RecommenderInteractions(ServiceClient):
    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        super().__init__(http, key, "recommender")

    async def record(self, interaction: dict) -> None:
        r = await self._call("POST", "/v1/interactions", json={"interactions": [interaction]})
        if r.status_code != 200:
            raise Unavailable(f"the recommender refused the interaction: {r.status_code} {r.text[:200]}")
        rejected = r.json().get("rejected")
        if rejected:  # our own message is wrong: a bug to see, not a retry to hide
            raise RuntimeError(f"the recommender rejected the open interaction: {rejected[0]}")
