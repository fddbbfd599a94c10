"""Presence and the stream limit in Redis: leases per worker and room (real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from server.store.connection_registry import USER_SLICES, ConnectionRegistry
from server.store.keys import user_connections_key, users_key
from server.store.presence_store import Holder


def worker(
    redis: aioredis.Redis,
    token: str,
    *,
    ttl_s: float = 0.3,
    limit: int = 10,
    per_address: int = 10_000,
) -> ConnectionRegistry:
    return ConnectionRegistry(
        redis,
        token,
        ttl_s=ttl_s,
        per_session_limit=limit,
        per_address_limit=per_address,
        name_ttl_s=60,
    )


async def open_(
    registry: ConnectionRegistry, room: str, user_id: str, connection_id: int, address: str
) -> str | None:
    """Register a connection as a stream open does: reserve its slots, then
    join its room if they were free; what was full."""
    full = await registry.reserve(room, user_id, connection_id, address)
    if full is None:
        await registry.join(room, Holder(user_id, address), connection_id)
    return full


async def online(redis: aioredis.Redis, room: str) -> list[str]:
    return sorted(str(u) for u in await redis.zrange(users_key(room), 0, -1))


async def calls(redis: aioredis.Redis) -> int:
    """Commands Redis has run so far (scripts count once, plus what they call)."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_a_dead_workers_connections_are_swept_and_free_their_slots(redis: Any) -> None:
    alive, dead = worker(redis, "alive"), worker(redis, "dead", limit=2)
    assert (await open_(alive, "lobby", "u-a", 1, "10.0.0.1")) is None
    assert (await open_(dead, "lobby", "u-b", 1, "10.0.0.1")) is None
    assert (await open_(dead, "other", "u-b", 2, "10.0.0.1")) is None
    # At the limit of 2:
    assert (await open_(dead, "lobby", "u-b", 3, "10.0.0.1")) == "session"
    assert await online(redis, "lobby") == ["u-a", "u-b"]
    # "dead" stops renewing; "alive" renews until the lease of "dead" runs out.
    async with asyncio.timeout(3):
        while await online(redis, "lobby") != ["u-a"]:
            await alive.refresh()
            await asyncio.sleep(0.05)
    # Bob's slot in the lobby is free again; his stream in "other" (which
    # nobody renews or sweeps) still counts until its own entry expires.
    assert [str(m) for m in await redis.zrange(user_connections_key("u-b"), 0, -1)] == [
        "dead:2|other"
    ]
    fresh = worker(redis, "fresh", limit=2)
    assert (await open_(fresh, "lobby", "u-b", 9, "10.0.0.1")) is None
    assert await online(redis, "lobby") == ["u-a", "u-b"]


async def test_a_renewal_costs_one_command_per_room_however_many_connections(
    redis: Any,
) -> None:
    async def cost(connections: int) -> int:
        w = worker(redis, f"w{connections}", ttl_s=60)
        for i in range(connections):
            # Ids whose user entries are due on the first renewal, not the second.
            stream = (i + 1) * USER_SLICES
            opened = await open_(w, f"room{connections}", f"u-{i}", stream, "10.0.0.1")
            assert opened is None
        await w.refresh()  # the first renewal loads the script
        before = await calls(redis)
        await w.refresh()
        return await calls(redis) - before - 1  # INFO itself

    few, many = await cost(2), await cost(200)
    assert many == few


async def test_a_worker_swept_while_it_stalled_joins_its_connections_again(redis: Any) -> None:
    stalled, other = worker(redis, "stalled"), worker(redis, "other")
    assert (await open_(stalled, "lobby", "u-s1", 1, "10.0.0.1")) is None
    assert (await open_(stalled, "lobby", "u-s2", 2, "10.0.0.1")) is None
    assert (await open_(other, "lobby", "u-o", 1, "10.0.0.1")) is None
    async with asyncio.timeout(3):
        while await online(redis, "lobby") != ["u-o"]:
            await other.refresh()
            await asyncio.sleep(0.05)
    await stalled.refresh()  # it runs again: its lease is gone, so it joins again
    assert await online(redis, "lobby") == ["u-o", "u-s1", "u-s2"]
    # And the counts are right: each user leaves once.
    await stalled.close("lobby", Holder("u-s1", "10.0.0.1"), 1)
    await stalled.close("lobby", Holder("u-s2", "10.0.0.1"), 2)
    assert await online(redis, "lobby") == ["u-o"]


async def test_two_connections_of_one_user_leave_presence_with_the_last(redis: Any) -> None:
    a, b = worker(redis, "a"), worker(redis, "b")
    assert (await open_(a, "lobby", "u-1", 1, "10.0.0.1")) is None
    assert (await open_(b, "lobby", "u-1", 1, "10.0.0.1")) is None
    await a.close("lobby", Holder("u-1", "10.0.0.1"), 1)
    assert await online(redis, "lobby") == ["u-1"]
    await b.close("lobby", Holder("u-1", "10.0.0.1"), 1)
    assert await online(redis, "lobby") == []
    assert await redis.zcard(user_connections_key("u-1")) == 0


async def test_scripts_lost_by_redis_are_loaded_again(redis: Any) -> None:
    w = worker(redis, "w")
    assert (await open_(w, "lobby", "u-1", 1, "10.0.0.1")) is None
    await redis.script_flush()  # as after a restart of Redis
    assert (await open_(w, "lobby", "u-2", 2, "10.0.0.1")) is None
    await w.refresh()
    assert await online(redis, "lobby") == ["u-1", "u-2"]
    await redis.script_flush()
    await w.close("lobby", Holder("u-1", "10.0.0.1"), 1)
    assert await online(redis, "lobby") == ["u-2"]


async def test_a_refused_stream_leaves_no_trace_in_the_room(redis: Any) -> None:
    w = worker(redis, "w", limit=1)
    assert (await open_(w, "lobby", "u-1", 1, "10.0.0.1")) is None
    assert (await open_(w, "other", "u-1", 2, "10.0.0.1")) == "session"
    assert await online(redis, "other") == []
    assert await redis.exists("chat:{other}:held:w") == 0
    assert [str(m) for m in await redis.zrange(user_connections_key("u-1"), 0, -1)] == ["w:1|lobby"]


async def test_a_client_address_has_a_stream_limit_of_its_own(redis: Any) -> None:
    w = worker(redis, "w", per_address=2)
    assert (await open_(w, "lobby", "u-1", 1, "10.0.0.9")) is None
    assert (await open_(w, "lobby", "u-2", 2, "10.0.0.9")) is None
    # A third user from the same address: refused, and no trace of it in the room.
    assert (await open_(w, "lobby", "u-3", 3, "10.0.0.9")) == "address"
    assert await online(redis, "lobby") == ["u-1", "u-2"]
    assert (await open_(w, "lobby", "u-3", 4, "10.0.0.10")) is None
    await w.close("lobby", Holder("u-1", "10.0.0.9"), 1)
    assert (await open_(w, "lobby", "u-3", 5, "10.0.0.9")) is None
