"""`create_app`: the push gateway as an ASGI app (receipts API) with, unless told otherwise, its
job consumer running beside it in the same event loop. Nothing connects until the app starts."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from vicino.services.kernel.clock import Clock, SystemClock
from vicino.services.runtime.api_keys import AuditTrail
from vicino.services.runtime.http_edge import install_edge, redis_check
from vicino.services.runtime.redis_client import service_redis
from vicino.services.runtime.stream_consumer import ConsumerCollector, consumer_check
from vicino.services.runtime.stream_lag import StreamLagCollector

from .api import routes
from .settings import PushSettings
from .wiring import SERVICE_KEY_NAME, SERVICE_KEY_ROLES, ProviderClients, build, build_consumer

log = logging.getLogger("vicino.push")


def create_app(settings: PushSettings | None = None, *, redis=None, clock: Clock | None = None,
               clients: ProviderClients | None = None, geo_http: httpx.AsyncClient | None = None,
               recommender_http: httpx.AsyncClient | None = None, run_worker: bool = True,
               consumer_name: str | None = None) -> FastAPI:
    """`clients`, `geo_http`, `recommender_http`: tests hand their own (pointed at local servers).
    `run_worker=False` serves only the receipts API (the worker runs elsewhere)."""
    settings = settings or PushSettings()
    clock = clock or SystemClock()
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_redis(settings.redis_url, settings.redis_wait_s, log, redis) as (r, hot):
            provider_clients = clients or ProviderClients.open(settings)
            geo = geo_http or httpx.AsyncClient(base_url=settings.geo_url, timeout=10.0)
            rec = recommender_http or httpx.AsyncClient(base_url=settings.recommender_url, timeout=10.0)
            container = app.state.container = build(settings, r, clock, registry, provider_clients, geo, rec,
                                                    hot_path=hot)
            app.state.audit = AuditTrail(r, settings.audit_retention_days, settings.token_secret)
            await container.access.keys.ensure_service_key(SERVICE_KEY_NAME, SERVICE_KEY_ROLES, clock.now())
            stop = asyncio.Event()
            tasks = []
            if run_worker:
                name = consumer_name or f"{socket.gethostname()}-{os.getpid()}"
                consumer = app.state.consumer = build_consumer(settings, r, name, container.delivery)
                registry.register(ConsumerCollector([consumer]))
                lag = app.state.stream_lag = StreamLagCollector(r, [(s, consumer.group) for s in consumer.streams])
                registry.register(lag)
                tasks.append(asyncio.create_task(consumer.run_forever(stop), name="push-consumer"))
            log.info("push gateway ready", extra={"fields": {"routes": container.routes, "worker": run_worker}})
            try:
                yield
            finally:
                stop.set()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await asyncio.wait_for(t, 30)
                # only what this app opened is closed here (tests hand their own clients)
                for mine, given in ((provider_clients, clients), (geo, geo_http), (rec, recommender_http)):
                    if given is None:
                        await mine.aclose()

    app = FastAPI(title="Vicino push gateway", version="1", lifespan=lifespan,
                  description="Delivers offers as push notifications (FCM HTTP v1, APNs, a signed webhook or the "
                              "log), once per visit, and keeps a receipt of each delivery. Authenticate with "
                              "`Authorization: Bearer <admin or device token>`.")

    async def ready() -> dict[str, str]:
        container = getattr(app.state, "container", None)
        checks = {"redis": await redis_check(container and container.redis)}
        consumer = getattr(app.state, "consumer", None)
        if consumer is not None:  # a consumer that cannot make progress makes the process unready
            checks["consumer"] = consumer_check([consumer])
        return checks

    app.include_router(routes.router)
    def alive() -> str:
        consumer = getattr(app.state, "consumer", None)
        return "ok" if consumer is None else consumer_check([consumer])

    async def before_scrape() -> None:
        lag = getattr(app.state, "stream_lag", None)
        if lag is not None:  # the job consumer's groups: lag, pending, oldest pending age
            await lag.refresh()

    install_edge(app, service="push", registry=registry, ready=ready, max_body_bytes=settings.max_body_bytes,
                 alive=alive, before_scrape=before_scrape)
    return app
