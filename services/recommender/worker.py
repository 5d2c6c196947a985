"""`vicino serve recommender-worker`: the recommender's background consumers in one process
(never inside the web workers): visits from the geo events, and the Parquet exporter."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from vicino.services.runtime.redis_client import open_async, wait_for_redis

from .settings import RecommenderSettings
from .wiring import build_worker_loops

log = logging.getLogger("vicino.recommender.worker")


async def run_worker(settings: RecommenderSettings, stop: asyncio.Event | None = None) -> None:
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
    try:
        loops = build_worker_loops(settings, redis, consumer)
        log.info("recommender worker running", extra={"fields": {"consumer": consumer, "loops": sorted(loops)}})
        await asyncio.gather(*(run(stop) for run in loops.values()))
    finally:
        await redis.aclose()
