"""The bare peers of `POST /v1/locations` for `make bench`.

`create_app`: same framework, same body model (`LocationBatchIn`), same uvicorn settings as the
geo service, and nothing else: no auth, no Redis, no index. It answers with a small JSON of the
shape the real endpoint returns for a quiet batch.

`create_redis_app`: the same, plus the two Redis round trips of a cold location request (a
script that reads a hash and two fields, then a script that writes the state back with a TTL),
through the redis-py asyncio client. It shows what per-request Redis I/O costs through redis-py;
the service itself makes one round trip in the steady state, on its pipelined client.

Run by bench/geo.py as `uvicorn bench._bare_app:create_app --factory` (or `create_redis_app`).
"""
from __future__ import annotations

import contextlib
import os

import orjson
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from starlette.requests import Request
from starlette.responses import Response

from vicino.services.geo.api.schemas import LocationBatchIn

_READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HMGET', KEYS[2], 'r', 's')}
"""
_WRITE = """
local rev = redis.call('HGET', KEYS[1], 'r') or '0'
if rev ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'r', tonumber(rev) + 1, 's', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _answer(n: int) -> Response:
    return Response(orjson.dumps({"accepted": n, "ignored": [], "events": [], "location_consent": True}),
                    media_type="application/json")


def create_app() -> FastAPI:
    app = FastAPI(title="bench bare endpoint", default_response_class=ORJSONResponse)

    @app.post("/v1/locations")
    async def locations(body: LocationBatchIn) -> Response:
        return _answer(len(body.fixes))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def create_redis_app() -> FastAPI:
    import redis.asyncio as aioredis

    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        r = aioredis.Redis.from_url(os.environ["VICINO_REDIS_URL"], health_check_interval=30)
        state["read"], state["write"] = r.register_script(_READ), r.register_script(_WRITE)
        yield
        await r.aclose()

    app = FastAPI(title="bench bare endpoint + Redis", default_response_class=ORJSONResponse, lifespan=lifespan)

    @app.post("/v1/locations")
    async def locations(body: LocationBatchIn) -> Response:
        d = body.device_id
        _reg, (rev, _s) = await state["read"](keys=[f"bench:reg:{{{d}}}", f"bench:state:{{{d}}}"])
        last = max(f.ts for f in body.fixes)
        await state["write"](keys=[f"bench:state:{{{d}}}"],
                             args=[(rev or b"0").decode(), orjson.dumps({"t": last, "v": {}}), 86_400_000])
        return _answer(len(body.fixes))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def create_ingest_app() -> FastAPI:
    """The bare peer of `POST /v1/interactions`: parse the batch with orjson, count it, answer.
    With VICINO_BENCH_VALIDATE=1, also judge every item as the service does (pure, no Redis)."""
    import time

    from vicino.services.recommender.domain.interactions import judge

    validate = os.environ.get("VICINO_BENCH_VALIDATE") == "1"
    app = FastAPI(title="bench bare interactions endpoint")

    @app.post("/v1/interactions")
    async def interactions(request: Request) -> Response:
        items = orjson.loads(await request.body())
        if validate:
            now = time.time()
            items = [judge(n, raw, now, 300) for n, raw in enumerate(items)]
        return Response(orjson.dumps({"accepted": len(items), "duplicates": 0, "rejected": []}),
                        media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app
