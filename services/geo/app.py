"""`create_app`: the geo service as an ASGI app. Nothing connects until the app starts."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from vicino.services.kernel.clock import Clock, SystemClock
from vicino.services.runtime.edge_guard import BulkLimit
from vicino.services.runtime.http_edge import install_edge, publish_body_schemas, redis_check
from vicino.services.runtime.redis_client import service_redis

from .api import access_routes
from .api.routes import HOT_PATH_ROUTES, router
from .api.schemas import ConsentBatchIn, LocationBatchIn
from .settings import GeoSettings
from .wiring import GeoMetrics, build

log = logging.getLogger("vicino.geo")


def create_app(settings: GeoSettings | None = None, *, redis=None, clock: Clock | None = None) -> FastAPI:
    settings = settings or GeoSettings()
    clock = clock or SystemClock()
    registry = CollectorRegistry()
    running: dict = {}  # the container of the running app, once started
    metrics = GeoMetrics(registry, lambda: running.get("sync"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_redis(settings.redis_url, settings.redis_wait_s, log, redis) as (r, hot):
            container = build(settings, r, clock, registry, metrics, hot)
            app.state.container = container
            app.state.audit = container.audit
            running["sync"] = container.sync
            stop = asyncio.Event()
            await container.sync.load_all()
            follower = asyncio.create_task(container.sync.follow(stop), name="store-index-follow")
            sweeper = asyncio.create_task(container.sweep.run(stop, settings.exit_sweep_interval_s,
                                                              metrics.count_swept), name="exit-sweep")
            log.info("geo service ready", extra={"fields": {"stores": len(container.sync.index)}})
            try:
                yield
            finally:
                stop.set()
                for task in (follower, sweeper):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    app = FastAPI(title="Vicino geo service", version="1", lifespan=lifespan,
                  description="Location fixes in, store visits (enter / dwell / exit) out. "
                              "Authenticate with `Authorization: Bearer <admin or device token>`.")

    async def ready() -> dict[str, str]:
        container = getattr(app.state, "container", None)
        return {"redis": await redis_check(container and container.redis),
                "store_index": "ok" if container and container.sync.loaded else "not loaded yet"}

    app.include_router(router)  # before the health routes: the hot path is matched first
    app.include_router(access_routes.router)
    app.router.routes[:0] = HOT_PATH_ROUTES
    install_edge(app, service="geo", registry=registry, ready=ready,
                 max_body_bytes=settings.max_body_bytes,
                 # only an operator (or admin) may send a bulk body; anyone else meets the default limit
                 bulk_limits={("POST", "/v1/stores"): BulkLimit(settings.max_bulk_body_bytes, frozenset({"operator"}))})
    publish_body_schemas(app, LocationBatchIn, ConsentBatchIn)
    return app
