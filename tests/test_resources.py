"""The worker's Redis pool: a burst waits for a connection, within a bound (real Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.resources import WaitingPool


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
