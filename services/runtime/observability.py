"""Structured JSON logs and Prometheus metrics shared by every service's HTTP edge."""
from __future__ import annotations

import logging
import sys
import time

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def quiet_request_logs() -> None:
    """httpx logs every request's URL at INFO, and our URLs name customers and devices (a call
    to geo's `/v1/customers/{id}/location-data`): its lines only from WARNING on."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str = "INFO", service: str = "vicino") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # per-request lines come from metrics instead
    quiet_request_logs()
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True


class LabelledChildren:
    """`metric.labels(...)` costs a lock and a tuple build per call; on a hot path, keep the
    children of the few label combinations that occur."""

    def __init__(self, metric) -> None:
        self.metric = metric
        self._children: dict[tuple, object] = {}

    def __call__(self, *labels):
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        return child


class HttpMetrics:
    """Per-route request counts and latency, on a registry owned by one app (no globals)."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.requests = Counter("vicino_http_requests_total", "HTTP requests",
                                ["service", "method", "route", "status"], registry=registry)
        self.latency = Histogram("vicino_http_request_duration_seconds", "HTTP request latency",
                                 ["service", "method", "route"], registry=registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.service = service
        self._requests = LabelledChildren(self.requests)
        self._latency = LabelledChildren(self.latency)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests(self.service, method, route, str(status)).inc()
        self._latency(self.service, method, route).observe(seconds)


class MetricsMiddleware:
    """Pure ASGI middleware: cheaper than BaseHTTPMiddleware on the hot path."""

    def __init__(self, app, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def _send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.record(scope["method"], path, status, time.perf_counter() - start)
