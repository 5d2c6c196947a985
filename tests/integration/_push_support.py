"""Helpers of the push gateway's integration tests: a real HTTP/1.1 webhook receiver, push jobs
as the recommender writes them, and the gateway app wired to local servers."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from vicino.services.kernel.contracts.interactions import customer_shard
from vicino.services.kernel.contracts.push_jobs import PushDataV1, PushJobV1, idempotency_key, push_jobs_stream_key
from vicino.services.kernel.ids import new_id


@dataclass
class WebhookSink:
    """Records every POST; answers from a script (status, headers, delay) then 200."""

    server: ThreadingHTTPServer
    received: list[dict] = field(default_factory=list)
    script: list[tuple[int, dict, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict]:
        with self.lock:
            return [orjson.loads(r["body"]) for r in self.received]


@contextlib.contextmanager
def webhook_sink():
    sink: WebhookSink | None = None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 (the stdlib's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with sink.lock:
                sink.received.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                      "at": time.time()})
                status, headers, delay = sink.script.pop(0) if sink.script else (200, {}, 0.0)
            if delay:
                time.sleep(delay)
            out = orjson.dumps({"ok": status < 300})
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    sink = WebhookSink(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


def make_job(customer_id: str, device_id: str, *, platform: str = "android", push_token: str = "tok",
             store_id: str = "store-1", visit_id: str | None = None, ttl_s: float = 900, created_at: float | None = None,
             body: str = "2 x 10% off at your store", offer_id: str = "offer-1", campaign_id: str | None = None,
             test: bool = False, deep_link: str | None = None, image_url: str | None = None) -> PushJobV1:
    visit_id = visit_id or new_id("vis")
    now = time.time() if created_at is None else created_at
    return PushJobV1(job_id=new_id("job"), idempotency_key=idempotency_key(customer_id, store_id, visit_id),
                     customer_id=customer_id, device_id=device_id, platform=platform, push_token=push_token,
                     title="An offer near you", body=body, deep_link=deep_link, image_url=image_url,
                     data=PushDataV1(offer_id=offer_id, store_id=store_id, visit_id=visit_id,
                                     decision_id=new_id("dec"), campaign_id=campaign_id, test=test),
                     collapse_key=visit_id, created_at=now, expires_at=now + ttl_s)


def enqueue(redis_sync, job: PushJobV1, shards: int = 16) -> str:
    """XADD as the recommender's decision script does."""
    stream = push_jobs_stream_key(customer_shard(job.customer_id, shards))
    return redis_sync.xadd(stream, job.to_stream_fields()).decode()
