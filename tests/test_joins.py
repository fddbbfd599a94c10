"""A storm of connects: shared round trips, and joins written per room per round (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.store.batch import Batch
from server.store.clients import redis_client
from server.store.connection_registry import ConnectionRegistry
from server.store.keys import address_connections_key, user_connections_key, users_key
from server.store.presence_store import Holder

from .support import sse_collector

pytestmark = pytest.mark.openapi

ROOM = "/api/rooms/general"


async def calls(redis: aioredis.Redis, *commands: str) -> int:
    """How often Redis has run these commands (those called by scripts included)."""
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


async def room_scripts(redis: aioredis.Redis) -> int:
    """The presence scripts run so far: each asks Redis for the TIME once."""
    return await calls(redis, "time")


async def test_a_storm_of_joins_in_a_room_is_one_presence_write(redis: Any) -> None:
    registry = ConnectionRegistry(
        redis, "w1", ttl_s=30, per_session_limit=10, per_address_limit=1000, name_ttl_s=60
    )
    users = [f"u-{i:04x}" for i in range(40)]
    for i, user in enumerate(users):
        assert await registry.reserve("lobby", user, i, "10.0.0.1") is None
    scripts, notices = await room_scripts(redis), await calls(redis, "publish")
    await asyncio.gather(
        *(registry.join("lobby", Holder(user, "10.0.0.1"), i) for i, user in enumerate(users))
    )
    # One join script and one presence notice for the 40 of them:
    assert await room_scripts(redis) - scripts == 1
    assert await calls(redis, "publish") - notices == 1
    assert sorted(await redis.zrange(users_key("lobby"), 0, -1)) == users
    await registry.stop()


async def test_a_storm_of_leaves_in_a_room_is_one_presence_write_and_frees_the_slots(
    redis: Any,
) -> None:
    registry = ConnectionRegistry(
        redis, "w1", ttl_s=30, per_session_limit=10, per_address_limit=1000, name_ttl_s=60
    )
    users = [f"u-{i:04x}" for i in range(40)]
    for i, user in enumerate(users):
        assert await registry.reserve("lobby", user, i, "10.0.0.1") is None
    await asyncio.gather(
        *(registry.join("lobby", Holder(user, "10.0.0.1"), i) for i, user in enumerate(users))
    )
    scripts, notices = await room_scripts(redis), await calls(redis, "publish")
    await asyncio.gather(
        *(registry.close("lobby", Holder(user, "10.0.0.1"), i) for i, user in enumerate(users))
    )
    # One leave script and one presence notice for the 40 of them:
    assert await room_scripts(redis) - scripts == 1
    assert await calls(redis, "publish") - notices == 1
    assert await redis.zcard(users_key("lobby")) == 0
    assert await redis.zcard(address_connections_key("10.0.0.1")) == 0
    assert all([await redis.zcard(user_connections_key(u)) == 0 for u in users])
    await registry.stop()


async def test_joins_arriving_during_a_round_go_in_the_next(redis: Any) -> None:
    registry = ConnectionRegistry(
        redis, "w1", ttl_s=30, per_session_limit=10, per_address_limit=1000, name_ttl_s=60
    )
    scripts = await room_scripts(redis)
    first = asyncio.ensure_future(registry.join("lobby", Holder("u-a", "10.0.0.1"), 1))
    await asyncio.sleep(0)  # the first round is on its way
    rest = [registry.join("lobby", Holder(f"u-{i}", "10.0.0.1"), 10 + i) for i in range(20)]
    await asyncio.gather(first, *rest)
    assert await room_scripts(redis) - scripts == 2
    assert await redis.zcard(users_key("lobby")) == 21
    await registry.stop()


async def test_batches_sent_together_share_one_connection_and_keep_their_own_errors(
    redis_url: str, redis: Any
) -> None:
    await redis.set("a-string", "x")
    clients = (await redis.info("clients"))["connected_clients"]
    async with redis_client(redis_url) as client:

        async def incr(key: str) -> int:
            batch = Batch(client)
            reply = batch.commands(lambda pipe: pipe.incr(key), lambda r: int(r[0]))
            await batch.run()
            return reply.value

        results = await asyncio.gather(
            *(incr(f"counter-{i}") for i in range(50)), incr("a-string"), return_exceptions=True
        )
        assert results[:50] == [1] * 50
        assert isinstance(results[50], ResponseError)  # (not a number: that batch only)
        # The 51 batches went in one pipeline, over the one connection the pool has:
        assert (await redis.info("clients"))["connected_clients"] == clients + 1


async def test_a_storm_of_streams_writes_presence_once_a_round_and_the_others_see_every_join(
    make_app: Any, aiohttp_client: Any, redis: Any
) -> None:
    app = await make_app(heartbeat_s=3600)  # (no heartbeat writes presence meanwhile)
    watcher = await aiohttp_client(app)
    others = [await aiohttp_client(watcher.server) for _ in range(30)]
    users = [(await (await c.get("/api/session")).json())["user_id"] for c in others]
    async with sse_collector(watcher.session, watcher.make_url(f"{ROOM}/events")) as seen:
        await seen.wait_for(lambda c: c.count == 1)
        scripts = await room_scripts(redis)
        async with contextlib.AsyncExitStack() as streams:
            await asyncio.gather(
                *(streams.enter_async_context(c.ws_connect(f"{ROOM}/ws")) for c in others)
            )
            await seen.wait_for(lambda c: c.count == 31)
            written = await room_scripts(redis) - scripts
            joined = {
                user["user_id"]
                for kind, data in seen.presence_events
                if kind == "presence_diff"
                for user in data["joined"]
            }
            assert joined == set(users)
            diffs = sum(1 for kind, _ in seen.presence_events if kind == "presence_diff")
    # Thirty connects at once: a few rounds of joins, not one script (and
    # one presence notice) each; the watcher is told in a few differences.
    assert written <= 10, written
    assert diffs <= 10, diffs


async def test_a_new_sessions_stream_is_admitted_in_one_script_then_joins(
    make_app: Any, aiohttp_client: Any, redis: Any
) -> None:
    app = await make_app(heartbeat_s=3600)
    watcher = await aiohttp_client(app)
    async with sse_collector(watcher.session, watcher.make_url(f"{ROOM}/events")) as seen:
        await seen.wait_for(lambda c: c.count == 1)
        client = await aiohttp_client(watcher.server)  # (no cookie: a new session)
        scripts = await calls(redis, "evalsha", "eval")
        reads = await calls(redis, "hmget")
        async with client.ws_connect(f"{ROOM}/ws"):
            await seen.wait_for(lambda c: c.count == 2)
            # Its new-session charge, ban check, limits and session write are
            # one script; its join another: not six commands and a join.
            assert await calls(redis, "evalsha", "eval") - scripts == 2
            assert await calls(redis, "hmget") == reads
        # The session was saved with it: the cookie is the same user's.
        user = (await (await client.get("/api/session")).json())["user_id"]
        joined = {
            u["user_id"]
            for kind, data in seen.presence_events
            if kind == "presence_diff"
            for u in data["joined"]
        }
        assert user in joined


async def test_a_failed_round_whose_joiners_all_left_logs_no_unretrieved_error(
    redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The joiner of a round is cancelled (its client left) and the round
    then fails on Redis (here a key of the wrong type: a restarted Redis
    still loading its data does the same): what the round raised reaches
    whoever still waits, and asyncio has no future's error left to log."""
    import gc

    registry = ConnectionRegistry(
        redis, "w1", ttl_s=30, per_session_limit=10, per_address_limit=1000, name_ttl_s=60
    )
    await redis.set(users_key("lobby"), "not a sorted set")
    holder = Holder("u-0001", "10.0.0.1")
    assert await registry.reserve("lobby", holder.user_id, 1, holder.address) is None
    joining = asyncio.ensure_future(registry.join("lobby", holder, 1))
    await asyncio.sleep(0)  # (it waits for its round)
    joining.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await joining
    await registry.stop()  # (the round ran and failed; the undo ran)
    del joining
    gc.collect()
    assert "never retrieved" not in caplog.text
