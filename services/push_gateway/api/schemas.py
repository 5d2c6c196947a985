"""The error answers of this service's API, as its OpenAPI documents them (RFC 9457 problem+json,
rendered by `vicino.services.runtime.http_problems`)."""
from __future__ import annotations

from vicino.services.runtime.http_problems import BODY_PROBLEMS, problem  # noqa: F401 (BODY_PROBLEMS re-exported to the routers)

# errors every /v1 route may answer (each authenticates its caller and validates its input)
PROBLEMS = {401: problem("missing, invalid, expired or replaced token"),
            403: problem("this token may not do this (admin-only route, or another customer's data)"),
            404: problem("no such resource (or route)"),
            422: problem("invalid input; `errors` lists each invalid field"),
            429: problem("this device token or API key is over its rate limit; `Retry-After` says when to retry")}
