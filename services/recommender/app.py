"""`create_app`: the recommender service as an ASGI app. Nothing connects until the app starts."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from vicino.services.kernel.clock import Clock, SystemClock
from vicino.services.runtime.api_keys import AuditTrail
from vicino.services.runtime.edge_guard import BulkLimit
from vicino.services.runtime.http_edge import install_edge, publish_body_schemas, redis_check
from vicino.services.runtime.redis_client import service_redis

from .api import campaign_routes, catalog_routes, customer_routes, kpi_routes, model_routes, offer_routes
from .api.customer_routes import InteractionBatchIn
from .domain.customer_records import CustomerBatchIn
from .settings import RecommenderSettings
from .adapters.model_store import ModelCollector
from .wiring import build, SERVICE_KEY_NAME, SERVICE_KEY_ROLES

log = logging.getLogger("vicino.recommender")


def create_app(settings: RecommenderSettings | None = None, *, redis=None, clock: Clock | None = None,
               geo_http: httpx.AsyncClient | None = None) -> FastAPI:
    """`geo_http`: the client that reaches the geo service (tests hand one bound to the real geo
    app in-process); by default one is opened on `settings.geo_url`."""
    settings = settings or RecommenderSettings()
    clock = clock or SystemClock()
    registry = CollectorRegistry()
    registry.register(ModelCollector(lambda: getattr(getattr(app.state, "container", None), "models", None),
                                     clock=clock.now))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_redis(settings.redis_url, settings.redis_wait_s, log, redis, hot_path=False) as (r, _):
            own_http = geo_http is None
            http = geo_http or httpx.AsyncClient(base_url=settings.geo_url, timeout=10.0)
            container = app.state.container = build(settings, r, clock, registry, http)
            app.state.audit = AuditTrail(r, settings.audit_retention_days, settings.token_secret)
            await container.access.keys.ensure_service_key(SERVICE_KEY_NAME, SERVICE_KEY_ROLES, clock.now())
            try:
                await container.models.refresh()
            except OSError as e:  # an unreadable model dir must not stop the service: popularity serves
                log.error("model directory unreadable at start", extra={"fields": {"error": repr(e)}})
            stop = asyncio.Event()
            follower = asyncio.create_task(container.models.follow(stop, settings.model_poll_s), name="model-follow")
            log.info("recommender service ready", extra={"fields": {"model": container.models.status.serving}})
            try:
                yield
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follower
                if own_http:
                    await http.aclose()

    app = FastAPI(title="Vicino recommender service", version="1", lifespan=lifespan,
                  description="Customers across channels, their interactions and history, the offer catalogue, "
                              "store stock and campaign rules. Authenticate with `Authorization: Bearer <admin "
                              "or device token>`.")

    async def ready() -> dict[str, str]:
        container = getattr(app.state, "container", None)
        return {"redis": await redis_check(container and container.redis),
                "model": container.models.readiness() if container else "not started"}

    app.include_router(customer_routes.router)
    app.include_router(catalog_routes.router)
    app.include_router(campaign_routes.router)
    app.include_router(offer_routes.router)
    app.include_router(kpi_routes.router)
    app.include_router(model_routes.router)
    install_edge(app, service="recommender", registry=registry, ready=ready,
                 max_body_bytes=settings.max_body_bytes,
                 # only an operator (or admin) may send a bulk body; anyone else meets the default limit
                 bulk_limits={("POST", "/v1/offers"): BulkLimit(settings.max_bulk_body_bytes, frozenset({"operator"}))})
    publish_body_schemas(app, InteractionBatchIn, CustomerBatchIn)
    return app
