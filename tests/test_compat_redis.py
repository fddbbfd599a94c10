"""Canaries for :mod:`server.store.redis_compat`: what the worker's pool relies
on of redis-py's pools and connections, checked against a real Redis (on
both event loops). Each fails when redis-py changes under it."""

from __future__ import annotations

import asyncio
import random
from importlib.metadata import version
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.common import asyncio_compat
from server.store.batch import SharingRedis
from server.store.clients import WaitingCluster, WaitingPool, redis_client
from server.store.redis_compat import (
    CHECKED_ON,
    OneDeadlinePipeline,
    closed_by_redis,
    drop_after,
    give_back,
    packed_by_hiredis,
)

from .support import checked_release, shadowed_names


def test_redis_py_is_a_release_these_were_checked_on() -> None:
    """A new redis-py: run these canaries, read the module's list again, then add it."""
    assert checked_release(version("redis"), CHECKED_ON), version("redis")


async def test_the_worker_s_pool_and_cluster_client_shadow_no_name_of_redis_py() -> None:
    """An attribute of ours named as one of redis-py's would silently take its place."""
    pool = aioredis.ConnectionPool.from_url("redis://127.0.0.1:1")
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # (never connected)
    client = aioredis.Redis.from_url("redis://127.0.0.1:1")
    try:
        assert not shadowed_names(WaitingPool, pool)
        assert not shadowed_names(WaitingCluster, cluster)
        assert not shadowed_names(SharingRedis, client)
        assert not hasattr(client, "pipelines")  # (a public name of ours)
        assert not shadowed_names(OneDeadlinePipeline, client.pipeline())
    finally:
        await pool.disconnect()
        await cluster.aclose()
        await client.aclose()


async def test_a_pipeline_s_commands_move_to_another_by_its_command_stack(redis: Any) -> None:
    """What Batch.plain_commands relies on: a plain pipeline keeps what it will
    send as (args, options) in ``command_stack``, and another pipeline that
    gets them sends them with their reply callbacks."""
    assert not hasattr(aioredis.Redis, "pipelines")  # (SharingRedis' own attribute)
    one = redis.pipeline(transaction=False)
    one.set("moved", "x").get("moved").zadd("moved-z", {"a": 1}).zscore("moved-z", "a")
    assert [args[0] for args, _ in one.command_stack] == ["SET", "GET", "ZADD", "ZSCORE"]
    other = redis.pipeline(transaction=False)
    other.command_stack.extend(one.command_stack)
    assert await other.execute(raise_on_error=False) == [True, "x", 1, 1.0]


async def test_a_connection_given_back_is_idle_again_for_redis_py_too(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url, max_connections=1)
    try:
        assert isinstance(pool._available_connections, list)
        connection = await pool.get_connection()  # redis-py's own bookkeeping
        assert connection in pool._in_use_connections
        give_back(pool, connection)
        assert not pool._in_use_connections and pool._available_connections == [connection]
        # redis-py hands out what was given back, and takes it back its own way.
        assert pool.can_get_connection()
        again = await pool.get_connection()
        assert again is connection
        await pool.release(again)
        assert pool._available_connections == [connection]
    finally:
        await pool.disconnect()


async def test_closed_by_redis_sees_the_end_of_a_connection_redis_closed(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url)
    admin = aioredis.Redis.from_url(redis_url)
    connection = pool.make_connection()
    try:
        assert not closed_by_redis(connection)  # not connected: nothing seen
        await connection.connect()
        assert isinstance(connection._reader, asyncio.StreamReader)
        await connection.send_command("CLIENT", "ID")
        client_id = await connection.read_response()
        assert not closed_by_redis(connection)
        await admin.execute_command("CLIENT", "KILL", "ID", client_id)
        async with asyncio.timeout(5):
            while not closed_by_redis(connection):
                await asyncio.sleep(0.01)
        assert connection.is_connected  # redis-py itself has not noticed
    finally:
        await connection.disconnect()
        await admin.aclose()
        await pool.disconnect()


async def test_every_command_and_pipeline_is_packed_by_the_connections_pack_command(
    redis_url: str,
) -> None:
    packed: list[tuple[Any, ...]] = []

    class Counted(packed_by_hiredis(aioredis.Connection)):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            packed.append(args)
            result: list[bytes] = super().pack_command(*args)
            return result

    assert packed_by_hiredis(aioredis.Connection) is not aioredis.Connection
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=Counted)
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.set("a", "1")
        pipe = client.pipeline(transaction=False)
        pipe.incrby("a", 1).get("a")
        assert await pipe.execute() == [2, b"2"]
        script = client.register_script("return redis.call('GET', KEYS[1])")
        assert await script(keys=["a"]) == b"2"
        names = [str(args[0]).split()[0].upper() for args in packed]
        assert {"SET", "INCRBY", "GET", "EVALSHA"} <= set(names)
    finally:
        await client.aclose()


def test_packed_by_hiredis_leaves_other_connection_classes_alone() -> None:
    class Own(AbstractConnection):
        pass

    assert packed_by_hiredis(Own) is Own
    for redis_class in (
        aioredis.Connection,
        aioredis.UnixDomainSocketConnection,
        aioredis.SSLConnection,
    ):
        assert issubclass(packed_by_hiredis(redis_class), redis_class)


async def test_a_one_deadline_pipeline_reads_its_replies_with_no_timeout_of_their_own(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=3)
    read_timeouts: list[float | None] = []
    try:
        await client.ping()
        [connection] = client.connection_pool._available_connections
        original = connection.read_response

        async def read_response(*args: Any, **kwargs: Any) -> Any:
            read_timeouts.append(connection.socket_timeout)
            return await original(*args, **kwargs)

        connection.read_response = read_response  # type: ignore[method-assign]
        pipe = OneDeadlinePipeline(client)
        pipe.set("a", "1").incr("a").get("a")
        assert await pipe.execute() == [True, 2, b"2"]
        # The connection it was given ran it (redis-py takes the one set),
        # with no timeout for each reply, and went back with its own.
        assert read_timeouts == [None, None, None]
        assert client.connection_pool._available_connections == [connection]
        assert connection.socket_timeout == 3
        assert not client.connection_pool._in_use_connections
    finally:
        await client.aclose()


async def test_a_one_deadline_pipeline_past_its_deadline_times_out_and_drops_its_connection(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=0.3)
    try:
        pipe = OneDeadlinePipeline(client)
        pipe.blpop(["nothing"], timeout=1).get("a")  # (Redis answers in 1 s)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeoutError):
            await pipe.execute()
        assert asyncio.get_running_loop().time() - started < 0.9
        [connection] = client.connection_pool._available_connections
        assert not connection.is_connected  # (its replies unread: dropped)
        assert connection.socket_timeout == 0.3
        assert await client.ping()
    finally:
        await client.aclose()


async def test_commands_dropped_from_a_pipeline_are_not_sent(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.set("kept", "1").set("dropped", "1").set("dropped too", "1")
        drop_after(pipe, 1)
        assert len(pipe) == 1
        assert await pipe.execute() == [True]
        assert await client.exists("kept", "dropped", "dropped too") == 1
    finally:
        await client.aclose()


async def cancellations_dropped(redis_url: str, tries: int, *, stop_at_first: bool) -> int:
    """Cancel a task busy with Redis calls, ``tries`` times, at random moments:
    how many times it went on (the cancellation was dropped)."""
    dropped = 0
    async with redis_client(redis_url) as client:

        async def busy() -> None:
            while True:
                await client.hlen("cancel-me")
                await asyncio.sleep(0.0005)

        for _ in range(tries):
            task = asyncio.create_task(busy())
            await asyncio.sleep(random.random() * 0.003)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=0.1)
            while not task.done():  # dropped: cancel again until it ends
                task.cancel()
                await asyncio.wait([task], timeout=0.05)
            if not done:
                dropped += 1
                if stop_at_first:
                    break
    return dropped


async def test_a_task_cancelled_during_a_redis_call_is_cancelled(redis_url: str) -> None:
    """With Python 3.11's wait_for fixed (server.common.asyncio_compat), a
    cancellation that comes while redis-py writes a command is never dropped."""
    assert asyncio.wait_for is asyncio_compat.wait_for or not asyncio_compat.needed()
    assert await cancellations_dropped(redis_url, 300, stop_at_first=False) == 0


@pytest.mark.skipif(not asyncio_compat.needed(), reason="wait_for is fixed in this Python")
async def test_python_3_11_wait_for_drops_cancellations_during_redis_calls(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the fix is installed: with the wait_for this Python came with, a
    cancellation during a redis-py call is dropped (about half of them here).
    When this fails, the fix may be taken out."""
    monkeypatch.setattr(asyncio, "wait_for", asyncio_compat.ORIGINAL)
    assert await cancellations_dropped(redis_url, 300, stop_at_first=True) >= 1
