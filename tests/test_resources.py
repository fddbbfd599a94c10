"""The worker's Redis pool: a burst waits for a connection, within a bound (real
Redis); commands are packed by hiredis, byte for byte as redis-py packs them."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError

from server.store.clients import WaitingPool


async def slow_command(client: aioredis.Redis) -> None:
    # Blocks its connection for 0.2 s on the server side.
    await client.blpop(["nothing-here"], timeout=0.2)


async def test_a_burst_larger_than_the_pool_waits_and_all_succeed(redis_url: str) -> None:
    pool = WaitingPool.from_url(redis_url, max_connections=2, wait_s=5.0)
    client = aioredis.Redis.from_pool(pool)
    try:
        started = time.monotonic()
        await asyncio.gather(*(slow_command(client) for _ in range(6)))
        # Two at a time: three rounds of 0.2 s.
        assert time.monotonic() - started >= 0.55
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) <= 2
        assert await client.ping()
    finally:
        await client.aclose()


async def test_waiting_longer_than_wait_s_is_a_connection_error(redis_url: str) -> None:
    pool = WaitingPool.from_url(redis_url, max_connections=1, wait_s=0.05)
    client = aioredis.Redis.from_pool(pool)
    try:
        results = await asyncio.gather(
            slow_command(client), slow_command(client), return_exceptions=True
        )
        assert results[0] is None
        assert isinstance(results[1], RedisConnectionError)
        # The refused command gave its slot back: the pool still works.
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.parametrize("cancel_after", [0.01, 0.3])
async def test_a_cancelled_command_gives_its_slot_back(redis_url: str, cancel_after: float) -> None:
    pool = WaitingPool.from_url(redis_url, max_connections=1, wait_s=5.0)
    client = aioredis.Redis.from_pool(pool)
    try:
        task = asyncio.create_task(slow_command(client))
        waiting = asyncio.create_task(slow_command(client))
        await asyncio.sleep(cancel_after)
        waiting.cancel()
        await asyncio.gather(task, waiting, return_exceptions=True)
        async with asyncio.timeout(2):
            assert await client.ping()
    finally:
        await client.aclose()


ARGUMENTS = [
    ("EVALSHA", "f" * 40, 2, "chat:{lobby}:a", "chat:{lobby}:b", 1.5, 10**20, -3, 0.1, 1e-7),
    ("SET", "ünïcödé", b"\x00\xff raw", "EX", 3600),
    ("CONFIG SET", "maxmemory", "1mb"),  # a name of two words goes as two arguments
    (b"CLIENT SETNAME", b"worker-0"),
]


@pytest.mark.parametrize("args", ARGUMENTS)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[object, ...]) -> None:
    pool = WaitingPool.from_url("redis://127.0.0.1:1", wait_s=1.0)
    connection = pool.make_connection()
    assert type(connection) is not aioredis.Connection  # the hiredis-packing one
    reference = aioredis.Connection()
    assert b"".join(connection.pack_command(*args)) == b"".join(reference.pack_command(*args))


def test_an_argument_redis_cannot_take_is_a_data_error() -> None:
    connection = WaitingPool.from_url("redis://127.0.0.1:1", wait_s=1.0).make_connection()
    with pytest.raises(DataError):
        connection.pack_command("SET", "key", {"not": "a string"})


async def test_the_pool_speaks_to_a_real_redis(redis_url: str) -> None:
    client = aioredis.Redis.from_pool(WaitingPool.from_url(redis_url, wait_s=1.0))
    try:
        await client.set("ünï", "välue ✓", ex=60)
        assert await client.get("ünï") == b"v\xc3\xa4lue \xe2\x9c\x93"
        pipe = client.pipeline(transaction=False)
        pipe.incrbyfloat("n", 1.5).incrby("m", 10**15)
        assert await pipe.execute() == [1.5, 10**15]
    finally:
        await client.aclose()
