"""Bounded storage: rooms expire, and a full Redis refuses new data without losing any.

The process tests run the real server on the tests' own Redis; the one that
fills Redis lowers its ``maxmemory`` and restores it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.common import config
from server.store.keys import stream_key

from .support import ServerProcess, sse_collector

pytestmark = pytest.mark.timeout(90)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("256mb", "256mb"), ("1GB", "1gb"), ("2048Kb", "2048kb"), ("1048576", "1048576")],
)
def test_redis_maxmemory_takes_a_redis_size(raw: str, stored: str) -> None:
    assert config.load(environ={"CHAT_REDIS_MAXMEMORY": raw}).redis_maxmemory == stored


@pytest.mark.parametrize(
    "raw", ["", "lots", "256 mb", "256m", "1tb", "-1mb", "0", "1023kb", "mb", "99999999999gb"]
)
def test_a_redis_maxmemory_that_is_not_a_size_is_refused(raw: str) -> None:
    with pytest.raises(config.ConfigError, match=r"^redis_maxmemory: "):
        config.load(environ={"CHAT_REDIS_MAXMEMORY": raw})


def test_a_redis_maxmemory_of_another_type_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "chat.toml"
    path.write_text("redis_maxmemory = 268435456\n")
    with pytest.raises(config.ConfigError, match=r"^redis_maxmemory: "):
        config.load(environ={"CHAT_CONFIG": str(path)})


def test_room_ttl_s_defaults_to_30_days_and_must_be_positive() -> None:
    defaults = config.load(environ={})
    assert defaults.room_ttl_s == 2592000 and defaults.redis_maxmemory == "256mb"
    assert config.load(environ={"CHAT_ROOM_TTL_S": "60"}).room_ttl_s == 60
    for raw in ("0", "-5", "1.5", "soon"):
        with pytest.raises(config.ConfigError, match=r"^room_ttl_s: "):
            config.load(environ={"CHAT_ROOM_TTL_S": raw})


# ------------------------------------------------------------------ helpers


async def post(
    http: aiohttp.ClientSession, room: str, text: str, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else None
    async with http.post(f"/api/rooms/{room}/messages", json={"text": text}, headers=headers) as r:
        return r.status, await r.json()


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
            status, body = await post(http, room, "soon gone", key="k-1")
            assert status == 201
            old_id = body["message"]["id"]
            await stream.wait_for(lambda c: old_id in c.ids)
            # Each message sets the room's expiry in the same script.
            assert ttl * 1000 - 1000 < await redis.pttl(stream_key(room)) <= ttl * 1000
            kinds = {key.split(":")[2] for key in await room_keys(redis, room)}
            assert kinds == {"messages", "counts", "users", "leases", "held", "idem"}
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


# ------------------------------------------------------------------ a full Redis


async def post_until_full(http: aiohttp.ClientSession, room: str, text: str) -> list[str]:
    """Post until Redis is full (a 503 storage_full); the ids accepted before."""
    accepted: list[str] = []
    # Bounded: 2000 messages of 2 KB are far more than the 512 KB left.
    for n in range(2000):
        status, body = await post(http, room, f"{n} {text}")
        if status != 201:
            break
        accepted.append(body["message"]["id"])
    else:
        pytest.fail("Redis never filled up")
    assert status == 503, body
    assert body["error"]["code"] == "storage_full", body
    assert accepted, "Redis was full before the first message"
    return accepted


async def expect_websocket_post_refused_as_full(http: aiohttp.ClientSession, room: str) -> None:
    async with http.ws_connect(f"/api/rooms/{room}/ws") as ws:
        await ws.send_str(json.dumps({"type": "message", "text": "ws", "ref": 1}))
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.receive_str()))["type"] != "error":
                assert frame["type"] != "ack", frame
        assert frame["ref"] == 1
        assert frame["error"]["code"] == "storage_full"


@pytest.mark.processes
async def test_a_full_redis_answers_503_keeps_serving_reads_and_streams_and_loses_nothing(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2)
    room = "crowded"
    text = "x" * 1900
    jar = aiohttp.CookieJar(unsafe=True)  # keeps the session cookie of 127.0.0.1
    async with aiohttp.ClientSession(server.url, cookie_jar=jar) as http:
        async with http.get("/api/session") as resp:  # an existing session from here on
            assert resp.status == 200
            assert resp.cookies
        async with sse_collector(http, f"/api/rooms/{room}/events") as before:
            limit = (await redis.config_get("maxmemory"))["maxmemory"]
            used = int((await redis.info("memory"))["used_memory"])
            await redis.config_set("maxmemory", used + 512 * 1024)
            try:
                accepted = await post_until_full(http, room, text)
                # Full for good while this checks the rest: Redis frees memory
                # as it goes (expiring keys), and a small write could fit again.
                await redis.config_set("maxmemory", 1)

                # Full, yet reads and streams go on: the history, a stream
                # opened now (replaying everything) and one opened before.
                assert await history_ids(http, room) == accepted
                everything = {"last_event_id": "0-0"}
                async with sse_collector(
                    http, f"/api/rooms/{room}/events", params=everything
                ) as sse:
                    await sse.wait_for(lambda c: len(c.ids) == len(accepted))
                    assert sse.ids == accepted
                await before.wait_for(lambda c: len(c.ids) == len(accepted))
                assert before.ids == accepted
                # A WebSocket opens, and a message sent on it gets the same error.
                await expect_websocket_post_refused_as_full(http, room)
                status, body = await post(http, room, "still full")
                assert (status, body["error"]["code"]) == (503, "storage_full")
                # A newcomer's session cannot be stored: a JSON error, not a 500.
                async with aiohttp.ClientSession(server.url) as newcomer:
                    async with newcomer.get(f"/api/rooms/{room}/events") as resp:
                        assert resp.status == 503
                        assert (await resp.json())["error"]["code"] == "storage_full"
            finally:
                await redis.config_set("maxmemory", limit)

            # Room again: posting works, and nothing accepted was lost.
            status, body = await post(http, room, "after")
            assert status == 201
            after = body["message"]["id"]
            await before.wait_for(lambda c: after in c.ids)
            assert before.ids == [*accepted, after]
        assert await history_ids(http, room) == [*accepted, after]
    assert "Traceback" not in server.log()
