"""A lean Redis client for hot paths: one connection, requests multiplexed (pipelined) on it.

redis-py's asyncio client costs ~100 µs of CPU per command here (pool checkout, packing,
parsing), which is as much as a whole FastAPI request. Replies on one connection come back in
order, so a deque of futures is all the bookkeeping needed; concurrent requests share writes and
reads; hiredis parses. It runs Lua scripts (EVALSHA, loading on NOSCRIPT) and plain commands.

Standalone Redis only: on a Redis Cluster the services use redis-py's cluster client, which
routes by slot. A lost connection fails the commands in flight (the callers' requests fail
cleanly, no data is half-written: scripts are atomic) and the next command reconnects.

It reads the URL as redis-py does: `rediss://` with its TLS options (`redis_tls.tls_context`),
`user:password@` (AUTH with the ACL user), the db. A connection is used only once its AUTH and
SELECT succeeded: one whose AUTH failed is closed, and the next command connects afresh.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import deque

import hiredis
from redis.connection import parse_url
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError

from .redis_tls import tls_context


def _pack(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, (int, float)):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future] = deque()
        self.deadlines: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.timed_out = False
        self.outbox: list[bytes] = []

    def _flush(self) -> None:
        payload = b"".join(self.outbox)
        self.outbox.clear()
        if not self.lost and self.transport is not None:
            self.transport.write(payload)

    def send(self, payload: bytes, fut: asyncio.Future) -> None:
        loop = fut.get_loop()
        self.waiters.append(fut)
        self.deadlines.append(loop.time() + self.timeout_s)
        # Commands issued in one turn of the event loop leave in one write (one syscall).
        self.outbox.append(payload)
        if len(self.outbox) == 1:
            loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout_s, self._check)

    def _check(self) -> None:
        """One timer per connection instead of one per command: a stuck Redis fails what is in
        flight (reply order can no longer be trusted, so the connection is dropped)."""
        self._watchdog = None
        if not self.deadlines:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadlines[0]:
            self.timed_out = True
            self.transport.abort()
            return
        self._watchdog = loop.call_at(self.deadlines[0], self._check)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            fut = self.waiters.popleft()
            self.deadlines.popleft()
            if fut.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(ResponseError(str(reply)))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.deadlines.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if self.timed_out:
                fut.set_exception(RedisTimeoutError(f"no reply from Redis within {self.timeout_s} s"))
            else:
                fut.set_exception(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))


class PipelinedRedis:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        opts = parse_url(url)
        self.host = opts.get("host", "127.0.0.1")
        self.port = int(opts.get("port", 6379))
        self.db = int(opts.get("db", 0) or 0)
        self.username = opts.get("username")
        self.password = opts.get("password")
        self.ssl = tls_context(url)
        self.timeout_s = timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and not conn.lost:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.lost:
                return self._conn
            loop = asyncio.get_running_loop()
            tls = {"ssl": self.ssl, "server_hostname": self.host} if self.ssl is not None else {}
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(self.timeout_s), self.host, self.port, **tls),
                    self.timeout_s)
            except (OSError, asyncio.TimeoutError) as e:  # ssl.SSLError (a certificate refused) is an OSError
                raise RedisConnectionError(f"cannot connect to Redis at {self.host}:{self.port}"
                                           f"{' over TLS' if tls else ''}: {e}") from None
            try:
                if self.username or self.password:
                    auth = ("AUTH", self.username, self.password or "") if self.username else ("AUTH", self.password)
                    try:
                        await self._send(conn, auth)
                    except ResponseError as e:
                        raise AuthenticationError(str(e)) from None
                if self.db:
                    await self._send(conn, ("SELECT", self.db))
            except BaseException:
                conn.transport.close()  # never reused: the next command connects (and authenticates) anew
                raise
            self._conn = conn
            return conn

    @staticmethod
    async def _send(conn: _Connection, args: tuple):
        fut = asyncio.get_running_loop().create_future()
        conn.send(_pack(args), fut)
        return await fut

    async def execute(self, *args):
        conn = self._conn
        if conn is None or conn.lost:
            conn = await self._connection()
        return await self._send(conn, args)

    # redis-py's name, so that callers run on either client (no reply parsing: raw RESP values)
    execute_command = execute

    def register_script(self, source: str) -> "PipelinedScript":
        return PipelinedScript(self, source)

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None


class PipelinedScript:
    """Same calling convention as redis-py's Script: `await script(keys=[...], args=[...])`."""

    def __init__(self, client: PipelinedRedis, source: str) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys=(), args=()):
        try:
            return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        await self.client.execute("SCRIPT", "LOAD", self.source)
        return await self.client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
