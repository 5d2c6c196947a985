"""The pipelined hot-path client against a real redis-server: same answers as redis-py,
order kept under concurrency, clean failures on a lost or stuck connection."""
import asyncio

import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError

from vicino.services.runtime.redis_pipe import PipelinedRedis

SCRIPT = "redis.call('HSET', KEYS[1], 'v', ARGV[1]); return {1, redis.call('HGET', KEYS[1], 'v'), tonumber(ARGV[2]) + 1}"


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("client_kind", ["redis-py", "pipelined"])
def test_scripts_answer_the_same_on_both_clients(redis_url, client_kind):
    async def go():
        client = aioredis.Redis.from_url(redis_url) if client_kind == "redis-py" else PipelinedRedis(redis_url)
        script = client.register_script(SCRIPT)
        try:
            first = await script(keys=["k:{a}"], args=["héllo", 41])
            await (client.execute_command("SCRIPT", "FLUSH") if client_kind == "redis-py" else client.execute("SCRIPT", "FLUSH"))
            again = await script(keys=["k:{a}"], args=[b"\x00bytes", 1.5])  # NOSCRIPT: loaded again
            return first, again
        finally:
            await client.aclose()

    first, again = run(go())
    assert first == [1, "héllo".encode(), 42]
    assert again[:2] == [1, b"\x00bytes"]


def test_replies_keep_their_order_under_concurrency(redis_url):
    async def go():
        client = PipelinedRedis(redis_url)
        try:
            await asyncio.gather(*[client.execute("SET", f"n{i}", i) for i in range(2000)])
            return await asyncio.gather(*[client.execute("GET", f"n{i}") for i in range(2000)])
        finally:
            await client.aclose()

    assert run(go()) == [str(i).encode() for i in range(2000)]


def test_error_replies_raise_and_the_connection_goes_on(redis_url):
    async def go():
        client = PipelinedRedis(redis_url)
        try:
            await client.execute("SET", "s", "text")
            with pytest.raises(ResponseError, match="WRONGTYPE|not an integer"):
                await client.execute("INCR", "s")
            return await client.execute("GET", "s")
        finally:
            await client.aclose()

    assert run(go()) == b"text"


def test_database_number_in_the_url_is_selected(redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/3"

    async def go():
        client = PipelinedRedis(url)
        try:
            await client.execute("SET", "in-db-3", "yes")
        finally:
            await client.aclose()

    run(go())
    assert redis_lib.Redis.from_url(url).get("in-db-3") == b"yes"
    assert redis_lib.Redis.from_url(redis_url).get("in-db-3") is None


def test_a_lost_connection_fails_what_is_in_flight_and_the_next_call_reconnects(redis_url, redis_sync):
    async def go():
        client = PipelinedRedis(redis_url)
        try:
            assert await client.execute("PING") == b"PONG"
            blocked = asyncio.ensure_future(client.execute("BLPOP", "never", 0))
            await asyncio.sleep(0.2)
            redis_sync.client_kill_filter(_type="normal", skipme=True)  # kills our connection
            with pytest.raises(RedisConnectionError):
                await blocked
            return await client.execute("PING")
        finally:
            await client.aclose()

    assert run(go()) == b"PONG"


def test_a_stuck_redis_times_out_instead_of_hanging(redis_url):
    async def go():
        client = PipelinedRedis(redis_url, timeout_s=0.5)
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(RedisTimeoutError):
                await client.execute("BLPOP", "never", 0)
            took = loop.time() - start
            return took, await client.execute("PING")
        finally:
            await client.aclose()

    took, pong = run(go())
    assert 0.4 <= took < 3 and pong == b"PONG"


def test_an_unreachable_redis_is_a_connection_error(redis_server):
    from vicino.services.launcher.embedded_redis import free_port

    async def go():
        client = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await client.execute("PING")

    run(go())
