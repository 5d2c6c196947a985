"""One way to open Redis for every service: standalone or Cluster, told apart by the server.

`VICINO_REDIS_URL` names one node (`redis://host:port/0`) or several, comma-separated
(`redis://user:pass@h1:7000,h2:7001,h3:7002`: the first is a whole URL whose scheme, credentials
and options apply to all; the others are `host:port` or whole URLs). On a Cluster every node
named is a startup node, so a client still starts, and still finds the topology again, when the
node the first URL names is the master that died.

TLS and ACL users, for every client (redis-py's and the pipelined hot-path one alike): a
`rediss://` URL, with redis-py's query options for the files, e.g.
`rediss://vicino:secret@redis:6380/0?ssl_ca_certs=/etc/vicino/redis/ca.pem&ssl_certfile=/etc/vicino/redis/client.pem&ssl_keyfile=/etc/vicino/redis/client.key`.
The server's certificate is verified against `ssl_ca_certs` (the system's CAs without it) and
its name against the host (`ssl_check_hostname=false` turns the name check off, the chain is
still verified); `user:password@` authenticates as that ACL user. TLS options on a `redis://`
URL are refused rather than ignored: the password would cross the network in clear.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from .redis_tls import tls_options


def node_urls(url: str) -> list[str]:
    """Each node of a (possibly comma-separated) `VICINO_REDIS_URL` as a whole URL."""
    parts = [p.strip() for p in url.split(",") if p.strip()]
    if not parts:
        raise ValueError("VICINO_REDIS_URL is empty")
    first = urlsplit(parts[0])
    if first.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"VICINO_REDIS_URL must start with redis://, rediss:// or unix://, not {redacted(parts[0])!r}")
    out = [parts[0]]
    for p in parts[1:]:
        if "://" in p:
            out.append(p)
            continue
        host, sep, port = p.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"a further node of VICINO_REDIS_URL must be host:port or a URL, not {p!r}")
        userinfo = first.netloc.rpartition("@")[0]
        out.append(urlunsplit(first._replace(netloc=(userinfo + "@" if userinfo else "") + p)))
    for u in out:
        tls_options(u)  # refuses unknown or misplaced TLS options at once
    return out


def _seed_nodes(url: str) -> list[tuple[str, int]]:
    return [(urlsplit(u).hostname or "127.0.0.1", urlsplit(u).port or 6379) for u in node_urls(url)]


def _is_cluster(url: str) -> bool:
    """Asks the nodes in turn (the first may be down); a single-node URL behaves as before."""
    nodes = node_urls(url)
    last: Exception | None = None
    for node in nodes:
        probe = redis.Redis.from_url(node, socket_connect_timeout=5)
        try:
            return bool(probe.info("cluster").get("cluster_enabled"))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            last = e
        finally:
            probe.close()
    raise redis.ConnectionError(f"no node of {redacted(url)} answered: {last}")


def redacted(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    head, sep, rest = url.partition(",")
    parts = urlsplit(head)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        head = urlunsplit(parts._replace(netloc=netloc))
    return head + sep + (redacted(rest) if "@" in rest else rest)


async def wait_for_redis(url: str, wait_s: float, log) -> None:
    """At start, Redis may come up after us (containers start in any order): retry with backoff
    for `wait_s`, then fail with one clear message."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    nodes = node_urls(url)
    while True:
        error: Exception | None = None
        for node in nodes:  # any node that answers will do: a client finds the rest from it
            probe = aioredis.Redis.from_url(node, socket_connect_timeout=2)
            try:
                await probe.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                error = e
            finally:
                await probe.aclose()
        if time.monotonic() + delay > deadline:
            raise RuntimeError(f"Redis at {redacted(url)} unreachable for {wait_s:g} s: {error}") from None
        log.warning("waiting for Redis", extra={"fields": {"redis": redacted(url), "error": str(error)}})
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


# A Redis that stops answering (paused, a network cut without a reset) must not hang requests:
# a command gets this long, then the request is a 503 (no command the services send takes long)
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
CLUSTER_MAX_CONNECTIONS_PER_NODE = 2048


def _single(url: str) -> str:
    nodes = node_urls(url)
    if len(nodes) > 1:
        raise ValueError(f"{redacted(url)} names {len(nodes)} nodes but the server is not a Redis Cluster; "
                         "name one node of a standalone Redis")
    return nodes[0]


def open_async(url: str) -> aioredis.Redis | AsyncRedisCluster:
    """`decode_responses` stays off: payloads are bytes decoded by the contracts."""
    timeouts = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
    if _is_cluster(url):
        from redis.asyncio.cluster import ClusterNode

        seeds = [ClusterNode(h, p) for h, p in _seed_nodes(url)]
        # every named node is a startup node; a connection error anywhere (the node a command or
        # the commands parser uses included) makes the client read the topology again
        # redis-py's cluster client refuses a command (MaxConnectionsError) rather than wait when
        # a node's pool is full (100 by default): a busy replica has more requests in flight
        return AsyncRedisCluster.from_url(node_urls(url)[0], startup_nodes=seeds,
                                          max_connections=CLUSTER_MAX_CONNECTIONS_PER_NODE, **timeouts)
    return aioredis.Redis.from_url(_single(url), health_check_interval=30, **timeouts)


def open_sync(url: str) -> redis.Redis | RedisCluster:
    if _is_cluster(url):
        from redis.cluster import ClusterNode

        return RedisCluster.from_url(node_urls(url)[0], startup_nodes=[ClusterNode(h, p) for h, p in _seed_nodes(url)])
    return redis.Redis.from_url(_single(url))


def open_hot_path(url: str, redis_client):
    """The client for per-request scripts: the pipelined one on a standalone Redis, else (a
    Cluster) the given redis-py client, which routes each script to its slot's node."""
    from .redis_pipe import PipelinedRedis

    if isinstance(redis_client, AsyncRedisCluster):
        return redis_client
    return PipelinedRedis(_single(url))


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


def _probe_key(key: str) -> str:
    """One probe per hash tag (a shard), not per key: `vicino:{cs:007}:replica-probe`."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return f"vicino:{key[start:end + 1]}:replica-probe" if 0 <= start < end - 1 else key + ":replica-probe"


class ReplicaWait:
    """After the writes a failover must not lose: `WAIT replicas timeout` on the master that owns a
    key. WAIT covers what its own connection wrote, and a client's pool hands each command any
    connection, so a small probe write in the key's slot goes first on the same connection (a
    pipeline to that node): it comes after the caller's write, so once a replica has the probe it
    has that write too (replication keeps a master's order). Asynchronous replication otherwise
    loses what a master acknowledged just before it died."""

    def __init__(self, client, url: str, replicas: int, timeout_ms: int, log) -> None:
        self._r = client
        self._url = node_urls(url)[0] if replicas > 0 else url
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._log = log
        self._nodes: dict[tuple[str, int], aioredis.Redis] = {}

    def _client_for(self, key: str):
        if not isinstance(self._r, AsyncRedisCluster):
            return self._r
        node = self._r.get_node_from_key(key)
        client = self._nodes.get((node.host, node.port))
        if client is None:  # one small pool per master (a promoted replica gets its own)
            parts = urlsplit(self._url)
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = (userinfo + "@" if userinfo else "") + f"{node.host}:{node.port}"
            client = self._nodes[(node.host, node.port)] = aioredis.Redis.from_url(
                urlunsplit(parts._replace(netloc=netloc)), socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S)
        return client

    async def after_write(self, key: str) -> None:
        if self.replicas <= 0:
            return
        async with self._client_for(key).pipeline(transaction=False) as pipe:
            pipe.set(_probe_key(key), b"1", px=60_000)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            _, acked = await pipe.execute()
        if int(acked) < self.replicas:  # availability first: the write stands on its master
            self._log.warning("write not replicated in time", extra={"fields": {
                "replicas": int(acked), "wanted": self.replicas, "timeout_ms": self.timeout_ms}})

    async def aclose(self) -> None:
        for client in self._nodes.values():
            await client.aclose()
        self._nodes.clear()
