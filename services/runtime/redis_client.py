"""One way to open Redis for every service: standalone or Cluster, told apart by the server."""
from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster


def _is_cluster(url: str) -> bool:
    probe = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def redacted(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def wait_for_redis(url: str, wait_s: float, log) -> None:
    """At start, Redis may come up after us (containers start in any order): retry with backoff
    for `wait_s`, then fail with one clear message."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        probe = aioredis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            await probe.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            if time.monotonic() + delay > deadline:
                raise RuntimeError(f"Redis at {redacted(url)} unreachable for {wait_s:g} s: {e}") from None
            log.warning("waiting for Redis", extra={"fields": {"redis": redacted(url), "error": str(e)}})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        finally:
            await probe.aclose()


# A Redis that stops answering (paused, a network cut without a reset) must not hang requests:
# a command gets this long, then the request is a 503 (no command the services send takes long)
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


def open_async(url: str) -> aioredis.Redis | AsyncRedisCluster:
    """`decode_responses` stays off: payloads are bytes decoded by the contracts."""
    timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
    if _is_cluster(url):
        return AsyncRedisCluster.from_url(url, **timeouts)
    return aioredis.Redis.from_url(url, health_check_interval=30, **timeouts)


def open_sync(url: str) -> redis.Redis | RedisCluster:
    if _is_cluster(url):
        return RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def open_hot_path(url: str, redis_client):
    """The client for per-request scripts: the pipelined one on a standalone Redis, else (a
    Cluster) the given redis-py client, which routes each script to its slot's node."""
    from .redis_pipe import PipelinedRedis

    if isinstance(redis_client, AsyncRedisCluster):
        return redis_client
    return PipelinedRedis(url)


@contextlib.asynccontextmanager
async def service_redis(url: str, wait_s: float, log, given=None, *, hot_path: bool = True):
    """A service's Redis for the life of its app: `(client, hot path client)` (the same client
    when `hot_path` is off). The given client (tests) is used as is; otherwise Redis is waited
    for, opened, and closed at the end."""
    r = given
    if r is None:
        await wait_for_redis(url, wait_s, log)
        r = open_async(url)
    hot = open_hot_path(url, r) if hot_path else r
    try:
        yield r, hot
    finally:
        if hot is not r:
            await hot.aclose()
        if given is None:
            await r.aclose()
