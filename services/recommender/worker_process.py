"""`vicino serve recommender-worker`: the recommender's background consumers in one process
(never inside the web workers): visits and decisions from the geo events, the model follower and
the Parquet exporter. A small HTTP edge on `port` answers /healthz (503 once a consumer has
failed `max_failed_rounds` rounds in a row: a liveness probe restarts the process), /readyz
(Redis, and the consumers) and /metrics (failed consumer rounds, dead letters, and each consumer
group's lag, pending entries and oldest pending age among them)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from vicino.services.kernel.contracts.interactions import interactions_stream_key
from vicino.services.runtime.http_edge import install_edge, redis_check
from vicino.services.runtime.redis_client import open_async, wait_for_redis
from vicino.services.runtime.stream_consumer import ConsumerCollector, StreamConsumer, consumer_check
from vicino.services.runtime.stream_lag import StreamLagCollector

from .settings import RecommenderSettings
from .wiring import build_worker_loops
from .workers.exporter import GROUP as EXPORTER_GROUP

log = logging.getLogger("vicino.recommender.worker")


def health_app(redis, consumers: list[StreamConsumer], extra_groups: list[tuple[str, str]] = ()) -> FastAPI:
    """`extra_groups`: (stream, group) read by loops that are not `StreamConsumer`s (the exporter)."""
    registry = CollectorRegistry()
    registry.register(ConsumerCollector(consumers))
    lag = StreamLagCollector(redis, [(s, c.group) for c in consumers for s in c.streams] + list(extra_groups))
    registry.register(lag)
    app = FastAPI(title="Vicino recommender worker", version="1", docs_url=None, redoc_url=None)

    async def ready() -> dict[str, str]:
        return {"redis": await redis_check(redis), "consumers": consumer_check(consumers)}

    install_edge(app, service="recommender-worker", registry=registry, ready=ready, max_body_bytes=1024,
                 alive=lambda: consumer_check(consumers), before_scrape=lag.refresh)
    return app


async def run_worker(settings: RecommenderSettings, stop: asyncio.Event | None = None, *,
                     host: str = "127.0.0.1", port: int | None = None) -> None:
    """`port` None: no health edge (tests that run the loops in-process)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    await wait_for_redis(settings.redis_url, settings.redis_wait_s, log)
    redis = open_async(settings.redis_url)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    server = None
    try:
        loops = build_worker_loops(settings, redis, consumer)
        tasks = [asyncio.create_task(run(stop), name=name) for name, run in loops.items()]
        if port is not None:
            import uvicorn

            consumers = [getattr(run, "__self__") for run in loops.values()
                         if isinstance(getattr(run, "__self__", None), StreamConsumer)]
            exported = [(interactions_stream_key(i), EXPORTER_GROUP) for i in range(settings.customer_shards)]
            server = uvicorn.Server(uvicorn.Config(health_app(redis, consumers, exported), host=host, port=port,
                                                   log_config=None, access_log=False, lifespan="off"))
            server.install_signal_handlers = lambda: None  # ours above stop the loops; the server follows
            tasks.append(asyncio.create_task(server.serve(), name="health"))
        log.info("recommender worker running", extra={"fields": {"consumer": consumer, "loops": sorted(loops),
                                                                 "health_port": port}})
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t is not stopper]  # a loop that returned or raised: exit, be restarted
        stop.set()
        if server is not None:
            server.should_exit = True
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 30)
        for t in crashed:
            if t.exception() is not None:
                raise t.exception()
    finally:
        await redis.aclose()
