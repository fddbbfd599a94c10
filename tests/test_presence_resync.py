"""Presence after Redis lost its latest writes: a real server process, a
real Redis restarted from a snapshot taken a moment before.

Between the snapshot and the restart one user left and another came. Redis
comes back with the one who left still online and without the one who came;
the worker, whose pub/sub link saw Redis go and come back, writes its
presence again: the room then lists exactly who is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest
import redis as sync_redis

from harness.redis_servers import RedisProcess, command
from server.store.clients import CLIENT_OPTIONS
from server.store.keys import user_connections_key

from .support import ServerProcess, sse_collector, user

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

ROOM = "/api/rooms/lobby"
# Twice the heartbeat is a worker's lease on a room: the restart comes well
# within it, so that the snapshot's presence is still current when loaded.
HEARTBEAT_S = "5"


async def user_id(session: aiohttp.ClientSession) -> str:
    async with session.get("/api/session") as resp:
        return str((await resp.json())["user_id"])


async def online(session: aiohttp.ClientSession) -> set[str]:
    async with session.get(f"{ROOM}/online") as resp:
        assert resp.status == 200
        return {entry["user_id"] for entry in (await resp.json())["online"]}


async def until_online(session: aiohttp.ClientSession, wanted: set[str], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while (now := await online(session)) != wanted:
            await asyncio.sleep(0.1)
    assert now == wanted


async def test_presence_is_written_again_after_redis_comes_back_from_a_snapshot(
    start_server: Callable[..., ServerProcess],
) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        server = start_server(redis_url=redis.url, workers=1, env={"CHAT_HEARTBEAT_S": HEARTBEAT_S})
        async with contextlib.AsyncExitStack() as stack:
            stays = await stack.enter_async_context(user(server.url))
            leaves = await stack.enter_async_context(user(server.url))
            comes = await stack.enter_async_context(user(server.url))
            ids = {
                name: await user_id(s)
                for name, s in (("stays", stays), ("leaves", leaves), ("comes", comes))
            }
            stream = f"{ROOM}/events"
            await stack.enter_async_context(sse_collector(stays, stream))
            async with sse_collector(leaves, stream):
                await until_online(stays, {ids["stays"], ids["leaves"]}, 10)
                assert command(redis.port, b"SAVE") == b"+OK"
            await stack.enter_async_context(sse_collector(comes, stream))
            await until_online(stays, {ids["stays"], ids["comes"]}, 10)

            redis.stop()  # (no save on the way down: the snapshot is what comes back)
            redis.start()
            # The worker catches up once its link to Redis is back.
            await until_online(stays, {ids["stays"], ids["comes"]}, 15)
            # And it stays so (the renewals since agree).
            await asyncio.sleep(float(HEARTBEAT_S))
            assert await online(stays) == {ids["stays"], ids["comes"]}
            # The slots of the connection that came back from the snapshot
            # are free; those of the one Redis had lost are taken again.
            with sync_redis.Redis.from_url(redis.url) as client:
                now_ms = time.time() * 1000
                slots = {
                    name: client.zcount(user_connections_key(ids[name]), now_ms, "+inf")
                    for name in ids
                }
            assert slots == {"stays": 1, "leaves": 0, "comes": 1}
        assert "Traceback" not in server.log()
        assert "presence written again in 1 rooms" in server.log()
    finally:
        redis.cleanup()


async def until_logged(server: ServerProcess, text: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while text not in server.log():
            await asyncio.sleep(0.1)


async def test_a_room_the_worker_comes_back_to_drops_what_redis_brought_back(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The worker held nothing in the room when it caught up after the
    restart, so that could not mend it; Redis still lists there, under this
    worker, a user who had left. The first to come back mends it."""
    redis = RedisProcess()
    redis.start()
    try:
        server = start_server(redis_url=redis.url, workers=1, env={"CHAT_HEARTBEAT_S": HEARTBEAT_S})
        async with user(server.url) as left, user(server.url) as later:
            left_id, later_id = await user_id(left), await user_id(later)
            stream = f"{ROOM}/events"
            async with sse_collector(left, stream):
                await until_online(later, {left_id}, 10)
                assert command(redis.port, b"SAVE") == b"+OK"
            await until_online(later, set(), 10)
            redis.stop()
            redis.start()
            await until_logged(server, "presence written again in 0 rooms", 15)
            assert await online(later) == {left_id}  # (what the snapshot had)
            async with sse_collector(later, stream):
                await until_online(later, {later_id}, 5)
                # Past the snapshot's lease, renewed since by the worker: still so.
                await asyncio.sleep(2 * float(HEARTBEAT_S) + 1)
                assert await online(later) == {later_id}
        assert "Traceback" not in server.log()
    finally:
        redis.cleanup()


async def test_a_leave_cut_off_by_a_hung_redis_is_written_once_it_answers_again(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Redis stops answering (SIGSTOP: frozen, its socket still open) while a
    stream closes, for longer than the workers' Redis timeout: the leave fails,
    the worker takes its presence to be out of step, and writes it again at
    the first heartbeat Redis answers. The room then lists who is there."""
    redis = RedisProcess()
    redis.start()
    hung_s = float(CLIENT_OPTIONS["socket_timeout"]) + 3  # (the fault: past the timeout)
    try:
        server = start_server(redis_url=redis.url, workers=1, env={"CHAT_HEARTBEAT_S": "2"})
        async with user(server.url) as stays, user(server.url) as leaves:
            stays_id, leaves_id = await user_id(stays), await user_id(leaves)
            stream = f"{ROOM}/events"
            async with sse_collector(stays, stream) as watching:
                async with sse_collector(leaves, stream):
                    await until_online(stays, {stays_id, leaves_id}, 10)
                    os.kill(redis.pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(hung_s)
                finally:
                    os.kill(redis.pid, signal.SIGCONT)
                await until_logged(server, "presence written again in 1 rooms", 15)
                await until_online(stays, {stays_id}, 10)
                # The one who stayed was told, on its stream.
                await watching.wait_for(
                    lambda c: [u["user_id"] for u in c.presence[-1]] == [stays_id]
                )
        assert "Traceback" not in server.log()
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        redis.cleanup()
