"""Bounded storage: rooms expire.

The process tests run the real server on the tests' own Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server import config
from server.broker import stream_key

from .support import ServerProcess, sse_collector

pytestmark = pytest.mark.timeout(90)


# ------------------------------------------------------------------ settings


def test_room_ttl_s_defaults_to_30_days_and_must_be_positive() -> None:
    assert config.load(environ={}).room_ttl_s == 2592000
    assert config.load(environ={"CHAT_ROOM_TTL_S": "60"}).room_ttl_s == 60
    for raw in ("0", "-5", "1.5", "soon"):
        with pytest.raises(config.ConfigError, match=r"^room_ttl_s: "):
            config.load(environ={"CHAT_ROOM_TTL_S": raw})


# ------------------------------------------------------------------ helpers


async def post(http: aiohttp.ClientSession, room: str, text: str) -> tuple[int, Any]:
    async with http.post(f"/api/rooms/{room}/messages", json={"text": text}) as resp:
        return resp.status, await resp.json()


async def room_keys(redis: aioredis.Redis, room: str) -> list[str]:
    return sorted([key async for key in redis.scan_iter(match=f"chat:{{{room}}}:*")])


async def history_ids(http: aiohttp.ClientSession, room: str) -> list[str]:
    """Every id in the room's history, oldest first, read a page at a time."""
    ids: list[str] = []
    params = {"limit": "200"}
    while True:
        async with http.get(f"/api/rooms/{room}/messages", params=params) as resp:
            assert resp.status == 200, await resp.text()
            page = [m["id"] for m in (await resp.json())["messages"]]
        ids[:0] = page
        if len(page) < 200:
            return ids
        params["before"] = page[0]


# ------------------------------------------------------------------ expiry


@pytest.mark.processes
async def test_a_room_without_new_messages_expires_with_every_key_and_can_begin_again(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    ttl = 2
    server = start_server(workers=2, env={"CHAT_ROOM_TTL_S": str(ttl)})
    room = "fleeting"
    async with aiohttp.ClientSession(server.url) as http:
        async with sse_collector(http, f"/api/rooms/{room}/events") as stream:
            status, body = await post(http, room, "soon gone")
            assert status == 201
            old_id = body["message"]["id"]
            await stream.wait_for(lambda c: old_id in c.ids)
            # Each message sets the room's expiry in the same script.
            assert ttl * 1000 - 1000 < await redis.pttl(stream_key(room)) <= ttl * 1000
            kinds = {key.split(":")[2] for key in await room_keys(redis, room)}
            assert kinds == {"messages", "counts", "users", "leases", "held"}
        # Nobody is connected and nobody writes: nothing of the room is left.
        deadline = time.monotonic() + ttl + 10
        while keys := await room_keys(redis, room):
            assert time.monotonic() < deadline, f"still in Redis: {keys}"
            await asyncio.sleep(0.05)
        assert await history_ids(http, room) == []

        # Resuming from an id of the expired history: nothing to replay; then
        # the room begins again with the next message.
        resume = {"last_event_id": old_id}
        async with sse_collector(http, f"/api/rooms/{room}/events", params=resume) as live:
            status, body = await post(http, room, "back again")
            assert status == 201
            new_id = body["message"]["id"]
            await live.wait_for(lambda c: new_id in c.ids)
            assert live.ids == [new_id]
        assert await history_ids(http, room) == [new_id]
        # A resume from the old history once the new one began: a gap first.
        async with sse_collector(http, f"/api/rooms/{room}/events", params=resume) as late:
            await late.wait_for(lambda c: new_id in c.ids)
            assert late.gaps == [(0, {"first_id": new_id})]
            assert late.ids == [new_id]
    assert "Traceback" not in server.log()
