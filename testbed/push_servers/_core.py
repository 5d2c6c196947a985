"""What the two push-provider stand-ins share: scripted replies, the record of what was received,
the `/_control/*` endpoints and running a server on its own event loop in a background thread."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

import orjson

KINDS = ("ok", "malformed", "drop", "reset")


@dataclass(frozen=True, eq=False)
class Reply:
    """How to answer one request. A 200 `ok` reply without a body means "the provider's normal
    success"; anything else is sent as given (dict/list bodies as JSON, str/bytes verbatim)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    kind: str = "ok"                 # ok | malformed | drop | reset
    error_code: int | None = None    # HTTP/2 only: RST_STREAM code (reset); GOAWAY code, if any (drop)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")

    @property
    def is_success(self) -> bool:
        return self.kind == "ok" and self.status == 200 and self.body is None

    def body_bytes(self) -> bytes:
        b = self.body
        if b is None:
            return b""
        if isinstance(b, bytes):
            return b
        if isinstance(b, str):
            return b.encode()
        return orjson.dumps(b)

    def to_json(self) -> dict:
        body = self.body.decode("utf-8", "replace") if isinstance(self.body, bytes) else self.body
        return {"status": self.status, "body": body, "headers": dict(self.headers), "delay_s": self.delay_s,
                "kind": self.kind, "error_code": self.error_code}

    @classmethod
    def from_json(cls, d: dict | None) -> "Reply | None":
        if d is None:
            return None
        if not isinstance(d, dict):
            raise ValueError("a reply is a JSON object")
        return cls(status=int(d.get("status", 200)), body=d.get("body"),
                   headers={str(k).lower(): str(v) for k, v in (d.get("headers") or {}).items()},
                   delay_s=float(d.get("delay_s") or 0.0), kind=str(d.get("kind") or "ok"),
                   error_code=None if d.get("error_code") is None else int(d["error_code"]))


OK = Reply()


def with_delay(reply: Reply, delay_s: float) -> Reply:
    return Reply(reply.status, reply.body, dict(reply.headers), delay_s, reply.kind, reply.error_code)


@dataclass(slots=True)
class Received:
    index: int
    path: str
    headers: dict[str, str]
    json: Any
    token: str | None
    received_at: float
    status: int | None               # what was answered; None when the connection/stream was cut
    method: str = "POST"
    kind: str = "ok"
    connection: int | None = None    # which TCP connection carried it (APNs), to check multiplexing

    def to_dict(self) -> dict:
        return {"index": self.index, "path": self.path, "headers": self.headers, "json": self.json,
                "token": self.token, "received_at": self.received_at, "status": self.status,
                "method": self.method, "kind": self.kind, "connection": self.connection}


class FakeServer:
    """Base of both stand-ins: scripting, recording, control endpoints, thread/process running.
    The server thread appends to the record and pops scripts; the test thread reads and scripts:
    both under one lock."""

    scheme = "http"
    name = "fake"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_records: int | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the stand-ins only listen on the loopback interface")
        self.host = host
        self.port = port
        self.max_records = max_records
        self._cond = threading.Condition(threading.Lock())
        self._scripts: dict[str, deque[Reply]] = {}
        self._default: Reply | None = None
        self._records: list[Received] = []
        self._base = 0                    # absolute index of _records[0] once old ones are dropped
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    # --- scripting -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def script(self, push_token: str, *replies: Reply) -> None:
        """Queue replies for the next requests to `push_token`, in order; then the default."""
        with self._cond:
            self._scripts.setdefault(push_token, deque()).extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        """The reply for every token without a scripted one (None: the normal success)."""
        with self._cond:
            self._default = reply

    def reset(self) -> None:
        with self._cond:
            self._scripts.clear()
            self._default = None
            self._base += len(self._records)
            self._records = []
        self._reset_extra()

    def _reset_extra(self) -> None:
        pass

    def _next_reply(self, push_token: str | None) -> Reply | None:
        with self._cond:
            if push_token is not None and self._scripts:
                queue = self._scripts.get(push_token)
                if queue:
                    reply = queue.popleft()
                    if not queue:
                        del self._scripts[push_token]
                    return reply
            return self._default

    # --- recording -------------------------------------------------------------------------
    def _record(self, **fields) -> Received:
        with self._cond:
            rec = Received(index=self._base + len(self._records), **fields)
            self._records.append(rec)
            if self.max_records is not None and len(self._records) > self.max_records:
                cut = len(self._records) - self.max_records // 2
                del self._records[:cut]
                self._base += cut
            self._cond.notify_all()
        return rec

    @property
    def received(self) -> list[Received]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._cond:
            return list(self._records)

    @property
    def total_received(self) -> int:
        """Requests received since the start, whether or not still in the record (indices are absolute)."""
        with self._cond:
            return self._base + len(self._records)

    def received_since(self, index: int) -> list[Received]:
        with self._cond:
            return self._records[max(0, index - self._base):]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Block until at least `n` requests are in the current record; return the record."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: {len(self._records)} requests received, waited for {n}")
                self._cond.wait(left)
            return list(self._records)

    def stats(self) -> dict:
        with self._cond:
            return {"received": len(self._records), "total_received": self._base + len(self._records),
                    "scripted_tokens": len(self._scripts)}

    # --- control endpoints (the real providers have none) ----------------------------------
    def control(self, method: str, path: str, query: str, body: bytes) -> tuple[int, bytes]:
        """`/_control/*`, the scripting API for a server in another process; returns (status, JSON).

        POST /_control/script    {"token": "...", "replies": [<reply>, ...]}   queue replies for a token
        POST /_control/default   {"reply": <reply> | null}  (or the reply itself)  the default reply
        GET  /_control/received?since=<index>   the records from that (absolute) index on
        POST /_control/reset     forget records, scripts and the default
        GET  /_control/stats     counters (grants, connections, streams, ...)
        <reply> = {"status": 429, "body": {...} | "text", "headers": {...}, "delay_s": 0.5,
                   "kind": "ok|malformed|drop|reset", "error_code": null}  (Reply.to_json())"""
        try:
            data = orjson.loads(body) if body else None
            if method == "POST" and path == "/_control/script":
                replies = [Reply.from_json(r) for r in data.get("replies") or []]
                self.script(str(data["token"]), *replies)
                return 200, orjson.dumps({"ok": True, "queued": len(replies)})
            if method == "POST" and path == "/_control/default":
                reply = data.get("reply") if isinstance(data, dict) and "reply" in data else data
                self.set_default(Reply.from_json(reply))
                return 200, orjson.dumps({"ok": True})
            if method == "GET" and path == "/_control/received":
                since = int((parse_qs(query).get("since") or ["0"])[0])
                return 200, orjson.dumps([r.to_dict() for r in self.received_since(since)])
            if method == "POST" and path == "/_control/reset":
                self.reset()
                return 200, orjson.dumps({"ok": True})
            if method == "GET" and path == "/_control/stats":
                return 200, orjson.dumps(self.stats())
            extra = self._control_extra(method, path, data)
            if extra is not None:
                return extra
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return 400, orjson.dumps({"error": f"{type(e).__name__}: {e}"})
        return 404, orjson.dumps({"error": f"no control endpoint {method} {path}"})

    def _control_extra(self, method: str, path: str, data) -> tuple[int, bytes] | None:
        return None

    # --- running ---------------------------------------------------------------------------
    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def serve(self, sock: socket.socket, ready: Callable[[], None]) -> None:
        raise NotImplementedError

    def _request_stop(self) -> None:
        raise NotImplementedError

    def start_in_thread(self, timeout: float = 10.0):
        """Listen now, serve from a daemon thread with its own event loop; returns self."""
        if self._thread is not None:
            raise RuntimeError("already started")
        sock = self.bind()
        self._thread = threading.Thread(target=self._thread_main, args=(sock,), daemon=True,
                                        name=f"{self.name}:{self.port}")
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"{self.name} did not start within {timeout}s")
        if self._startup_error is not None:
            raise RuntimeError(f"{self.name} failed to start") from self._startup_error
        return self

    def _thread_main(self, sock: socket.socket) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self.serve(sock, self._started.set))
        except BaseException as e:  # surfaced by start_in_thread if it happens while starting
            self._startup_error = e
        finally:
            self._started.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._request_stop)
            except RuntimeError:  # the loop closed in between
                pass
        thread.join(timeout)
        self._thread = self._loop = None

    def __enter__(self):
        if self._thread is None:
            self.start_in_thread()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def run_forever(self, announce: Callable[[str], None] | None = None) -> None:
        """Serve in the current (main) thread until SIGTERM/SIGINT; `announce(url)` once listening."""
        sock = self.bind()
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self.serve(sock, lambda: announce and announce(self.url)))
        finally:
            loop.close()
            sock.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for a key file whose token_uri must be known first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def print_ready(url: str) -> None:
    print(f"READY {url}", flush=True)
