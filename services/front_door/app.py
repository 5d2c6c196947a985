"""The front door: every public route of every service on one port, for `vicino up` and for a
small deployment that wants one process for the whole API.

It is a composition root, not a proxy: it builds each service's own app (geo, recommender, the
push gateway's receipts API, the scheduler's jobs API; never a worker) and hands each request to
its owner, chosen by the routing table the production Ingress carries too
(`kernel/contracts/public_routes.py`). A request therefore costs one dictionary look-up more
than at the service itself. Each app keeps its own edge (authentication, limits, problems,
metrics, audit); the front door adds only what spans them: one OpenAPI document, one /docs, an
aggregate /readyz and /metrics, and a problem+json 404 for a path no service owns.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Awaitable, Callable

import orjson
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response

from vicino.services.kernel.contracts.public_routes import SERVICES, owner_of
from vicino.services.runtime.http_problems import problem_response

from .openapi import merge_documents
from .prometheus_text import merge_expositions

Asgi = Callable[[dict, Callable, Callable], Awaitable[None]]
FRONT_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")


async def asgi_get(app: Asgi, path: str) -> tuple[int, bytes, str]:
    """GET `path` from an ASGI app in-process: (status, body, content type)."""
    sent: dict = {"status": 500, "body": b"", "type": ""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["type"] = dict(message.get("headers", [])).get(b"content-type", b"").decode()
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
               "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
               "headers": [(b"host", b"front-door")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)},
              receive, send)
    return sent["status"], sent["body"], sent["type"]


class FrontDoor:
    """The ASGI app: `/v1/...` to its owner's app, the rest to the front door's own routes."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        unknown = set(apps) - set(SERVICES)
        if unknown:
            raise ValueError(f"not a service of the routing table: {sorted(unknown)}")
        self.apps = apps
        self.own = self._own_app()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            owner = owner_of(scope["path"])
            if owner is not None:
                app = self.apps.get(owner)
                if app is None:
                    response = problem_response(
                        404, "Not served here", f"{scope['path']} belongs to the {owner} service, which this front "
                        "door does not serve", instance=scope["path"])
                    return await response(scope, receive, send)
                return await app(scope, receive, send)
        await self.own(scope, receive, send)

    def _own_app(self) -> FastAPI:
        apps = self.apps

        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI):
            # each service starts as it would alone (Redis, its index or model, its followers),
            # and stops in the reverse order
            async with contextlib.AsyncExitStack() as stack:
                for app in apps.values():
                    await stack.enter_async_context(app.router.lifespan_context(app))
                # four services' start-up objects (indexes, models, OpenAPI, routers) stay for the
                # process's life: out of the cyclic collector's sight, its full passes stay as
                # short as one service's (a request no longer pays for the others' heaps)
                gc.collect()
                gc.freeze()
                yield

        own = FastAPI(title="Vicino", version="1", lifespan=lifespan, openapi_url=None, docs_url=None,
                      redoc_url=None)
        document: dict = {}

        @own.get("/openapi.json", include_in_schema=False)
        async def openapi() -> Response:
            if not document:
                document.update(merge_documents({name: app.openapi() for name, app in apps.items()}))
            return Response(orjson.dumps(document), media_type="application/json")

        @own.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="Vicino API")

        @own.get("/healthz", include_in_schema=False)
        async def healthz() -> Response:
            failing = {}
            for name, app in apps.items():
                status, body, _ = await asgi_get(app, "/healthz")
                if status != 200:
                    failing[name] = orjson.loads(body).get("detail", status) if body else status
            if failing:
                return problem_response(503, "Not making progress",
                                        "; ".join(f"{n}: {d}" for n, d in failing.items()), instance="/healthz")
            return Response(orjson.dumps({"status": "ok", "service": "front", "services": sorted(apps)}),
                            media_type="application/json")

        @own.get("/readyz", include_in_schema=False)
        async def readyz() -> Response:
            answers = {}
            for name, app in apps.items():
                status, body, _ = await asgi_get(app, "/readyz")
                answers[name] = (status, orjson.loads(body) if body else {})
            if all(s == 200 for s, _ in answers.values()):
                degraded = any(b.get("status") != "ready" for _, b in answers.values())
                return Response(orjson.dumps({"status": "degraded" if degraded else "ready", "service": "front",
                                              "services": {n: b for n, (_, b) in answers.items()}}),
                                media_type="application/json")
            failing = "; ".join(f"{n}: {b.get('detail', s)}" for n, (s, b) in answers.items() if s != 200)
            return problem_response(503, "Not ready", failing, instance="/readyz")

        @own.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            texts = []
            content_type = "text/plain; version=0.0.4; charset=utf-8"
            for app in apps.values():
                status, body, kind = await asgi_get(app, "/metrics")
                if status == 200:
                    texts.append(body.decode())
                    content_type = kind or content_type
            return Response(merge_expositions(texts), media_type=content_type)

        @own.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                       include_in_schema=False)
        async def unknown(path: str) -> Response:
            return problem_response(404, "Not Found", f"no service has a route at /{path}; the API is under /v1/ "
                                    "(see /docs)", instance=f"/{path}")

        return own


def create_front_door(apps: dict[str, FastAPI]) -> FrontDoor:
    return FrontDoor(apps)
