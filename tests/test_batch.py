"""Batches (:mod:`server.store.batch`) on the worker's client of one Redis:
those run in the same turn of the event loop share one round trip, yet
each gets its own replies and its own errors, and a cancelled one cancels
no other. Real Redis, both event loops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError, ResponseError

from server.store.batch import Batch, SharingRedis
from server.store.clients import redis_client

pytestmark = pytest.mark.timeout(30)

NAME = "batch-test"


async def connections_named(redis: aioredis.Redis, name: str) -> int:
    clients = await redis.client_list()
    return sum(1 for client in clients if client.get("name") == name)


async def counted(redis: aioredis.Redis, key: str) -> int:
    batch = Batch(redis)
    reply = batch.commands(lambda pipe: pipe.incr(key), lambda replies: int(replies[0]))
    await batch.run()
    return reply.value


async def test_batches_of_one_turn_share_one_connection_and_round_trip(
    redis_url: str, redis: aioredis.Redis
) -> None:
    async with redis_client(f"{redis_url}?client_name={NAME}") as client:
        assert isinstance(client, SharingRedis)
        before = (await redis.info("stats"))["total_commands_processed"]
        # Twenty requests' batches at once: one pipeline, so one connection
        # (each on its own would take a connection of the pool's each).
        values = await asyncio.gather(*(counted(client, f"k{n % 4}") for n in range(20)))
        assert sorted(values) == sorted(v for _ in range(4) for v in range(1, 6))
        assert await connections_named(redis, NAME) == 1
        after = (await redis.info("stats"))["total_commands_processed"]
        # (The INFO itself, the PING of redis_client's start and the twenty INCRs.)
        assert after - before <= 20 + 3


async def test_each_batch_of_a_shared_pipeline_gets_its_own_replies_and_errors(
    redis: aioredis.Redis,
) -> None:
    await redis.set("text", "not a number")

    async def failing() -> Any:
        return await counted(redis, "text")

    results = await asyncio.gather(
        counted(redis, "n"), failing(), counted(redis, "n"), return_exceptions=True
    )
    assert results[0] in (1, 2) and results[2] in (1, 2) and results[0] != results[2]
    assert isinstance(results[1], ResponseError)


async def test_a_cancelled_batch_cancels_no_other_of_its_pipeline(redis: aioredis.Redis) -> None:
    first = asyncio.ensure_future(counted(redis, "a"))
    second = asyncio.ensure_future(counted(redis, "b"))
    await asyncio.sleep(0)  # (both have joined the turn's pipeline)
    first.cancel()
    assert await second == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    # The pipeline went out whole: the cancelled request's command ran too.
    assert await redis.get("a") == "1"


async def test_a_batch_with_nothing_in_it_sends_nothing(redis: aioredis.Redis) -> None:
    before = (await redis.info("stats"))["total_commands_processed"]
    await Batch(redis).run()
    after = (await redis.info("stats"))["total_commands_processed"]
    assert after - before == 1  # (the INFO)


async def test_a_batch_that_cannot_be_packed_fails_alone(redis: aioredis.Redis) -> None:
    async def unpackable() -> Any:
        batch = Batch(redis)
        batch.commands(lambda pipe: pipe.execute_command("SET", "x", object()), list)
        await batch.run()

    results = await asyncio.gather(
        counted(redis, "n"), unpackable(), counted(redis, "n"), return_exceptions=True
    )
    assert sorted(results[0::2]) == [1, 2]  # type: ignore[type-var]
    assert isinstance(results[1], DataError)
    assert await redis.get("n") == "2" and await redis.get("x") is None


async def test_a_batch_that_fails_to_queue_sends_none_of_its_commands(
    redis: aioredis.Redis,
) -> None:
    def half(pipe: Any) -> None:
        pipe.incr("half")
        raise ValueError("a store's bug")

    async def failing() -> Any:
        batch = Batch(redis)
        batch.commands(half, list)
        await batch.run()

    results = await asyncio.gather(counted(redis, "n"), failing(), return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], ValueError)
    assert await redis.get("half") is None
