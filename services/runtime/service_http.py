"""Another service's HTTP API, called with the admin token: what cannot be told from a refusal
(unreachable, 5xx, our token refused) is `Unavailable`, a 503 that the caller's client retries."""
from __future__ import annotations

import httpx

from ..kernel.problems import Unavailable


class ServiceClient:
    def __init__(self, http: httpx.AsyncClient, key: str, service: str) -> None:
        """`key`: the calling service's own API key (`kernel.roles.service_key`), never the admin token."""
        self._http = http
        self._headers = {"Authorization": f"Bearer {key}"}
        self.service = service

    async def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = await self._http.request(method, path, headers=self._headers, **kw)
        except httpx.HTTPError as e:
            raise Unavailable(f"the {self.service} service is unreachable ({type(e).__name__}); nothing was lost, "
                              "retry") from e
        if r.status_code >= 500 or r.status_code in (401, 403):
            raise Unavailable(f"the {self.service} service answered {r.status_code} to {method} {path}; retry")
        return r
