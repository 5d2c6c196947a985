"""What every service's HTTP edge has: problem+json errors, body limits, metrics, health routes."""
from __future__ import annotations

import asyncio
from typing import Annotated, Awaitable, Callable

import orjson
from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from .api_keys import AuditMiddleware, document_access
from .edge_guard import BulkLimit, EdgeGuard
from .observability import HttpMetrics, MetricsMiddleware
from ..kernel.problems import InvalidInput, require_json_content_type
from ..kernel.times import BadInstant, parse_instant
from .http_problems import install_problem_handlers, problem_response

ReadyCheck = Callable[[], Awaitable[dict[str, str]]]  # component -> "ok" or what is wrong


async def redis_check(redis) -> str:
    """A readiness check's answer for Redis: "ok", or why not (never raises)."""
    if redis is None:
        return "not started"
    try:
        await asyncio.wait_for(redis.ping(), 2.0)
        return "ok"
    except Exception as e:  # report, don't raise: this is the readiness answer
        return f"unreachable ({type(e).__name__})"


def install_edge(app: FastAPI, *, service: str, registry: CollectorRegistry, ready: ReadyCheck,
                 max_body_bytes: int, bulk_limits: dict[tuple[str, str], BulkLimit] | None = None,
                 alive: Callable[[], str] | None = None,
                 before_scrape: Callable[[], Awaitable[None]] | None = None) -> None:
    """`alive`: for a process with background consumers, "ok" or why it cannot make progress;
    anything but "ok" makes /healthz a 503, so that a liveness probe restarts the process.
    `bulk_limits`: (method, path) -> a larger body limit for the callers holding its roles.
    `before_scrape`: awaited before /metrics renders (collectors that read Redis, such as the
    consumer groups' lag, refresh there: prometheus_client's collectors cannot await)."""
    install_problem_handlers(app)
    app.add_middleware(AuditMiddleware)
    app.add_middleware(EdgeGuard, default_limit=max_body_bytes, bulk=bulk_limits)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry, service))

    @app.get("/healthz", tags=["health"], summary="process is alive (and its consumers make progress)",
             responses={503: {"description": "a background consumer has failed too many rounds in a row"}})
    async def healthz() -> Response:
        verdict = alive() if alive is not None else "ok"
        if verdict != "ok":
            return problem_response(503, "Not making progress", verdict, instance="/healthz")
        return Response(orjson.dumps({"status": "ok", "service": service}), media_type="application/json")

    @app.get("/readyz", tags=["health"], summary="dependencies reachable and data loaded",
             responses={503: {"description": "not ready; the body says which check failed"}})
    async def readyz() -> Response:
        checks = await ready()
        # "degraded: …" reports a problem that does not stop the replica from serving (it keeps
        # traffic: taking every replica out for it would turn a degradation into an outage)
        serving = all(v == "ok" or v.startswith("degraded") for v in checks.values())
        if serving:
            status = "ready" if all(v == "ok" for v in checks.values()) else "degraded"
            return Response(orjson.dumps({"status": status, "service": service, "checks": checks}),
                            media_type="application/json")
        failing = "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return problem_response(503, "Not ready", failing, instance="/readyz")

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        if before_scrape is not None:
            await before_scrape()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    document_access(app)


def publish_body_schemas(app: FastAPI, *models) -> None:
    """Routes that parse their body themselves (speed, or per-item verdicts) still publish its
    schema in the OpenAPI, under the model's name."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
        return app.openapi_schema

    app.openapi = openapi


async def json_body(request: Request):
    """A JSON body parsed with orjson (fast on 100k-item bulk writes), with a clear 415 or 422 when
    it is not JSON; for routes that judge the items of a batch one by one."""
    require_json_content_type(request.headers.get("content-type"))
    raw = await request.body()
    if not raw:
        raise InvalidInput("request body is empty; expected JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None


JsonBody = Annotated[object, Depends(json_body)]

INSTANT_PARAM = "RFC 3339 with an offset (e.g. 2025-12-06T05:46:40Z), or epoch seconds"


def instant_param(value: str | None, name: str, default: float | None = None) -> float | None:
    """A query parameter that is a time (RFC 3339 with an offset, or epoch seconds) as epoch
    seconds; `default` when it is absent; a 422 naming the parameter when it is not a time."""
    if value is None:
        return default
    try:
        return parse_instant(value)
    except BadInstant as e:
        raise InvalidInput(f"{name}: {e}", errors=[{"field": f"query.{name}", "message": str(e)}]) from None
