"""Idempotent publishing: a retry with the same key returns the first message and stores nothing.

In-process tests cover the rules (HTTP ``Idempotency-Key``, WebSocket ``key``,
sessions, the rate limit, trimming); the process tests lose the first answer
for real, to a Redis that stops answering for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from yarl import URL

from server.store.keys import idempotency_record_key, stream_key

from .support import ServerProcess, in_background, user

pytestmark = pytest.mark.openapi

ROOM = "/api/rooms/general"


async def post(client: Any, text: str, key: str | None) -> tuple[int, Any, Any]:
    """Status, body and headers of a POST, with ``key`` as its Idempotency-Key."""
    headers = {"Idempotency-Key": key} if key is not None else {}
    resp = await client.post(f"{ROOM}/messages", json={"text": text}, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def history(client: Any) -> list[dict[str, Any]]:
    resp = await client.get(f"{ROOM}/messages", params={"limit": "200"})
    assert resp.status == 200
    return (await resp.json())["messages"]  # type: ignore[no-any-return]


async def user_id(client: Any) -> str:
    resp = await client.get("/api/session")
    assert resp.status == 200
    return (await resp.json())["user_id"]  # type: ignore[no-any-return]


async def answer(ws: Any, kind: str) -> dict[str, Any]:
    """The next frame of ``kind`` (ack or error), skipping live messages and presence."""
    async with asyncio.timeout(10):
        while (frame := await ws.receive_json())["type"] != kind:
            assert frame["type"] not in ("ack", "error"), frame
    return frame  # type: ignore[no-any-return]


# ------------------------------------------------------------------ in-process


async def test_a_post_repeated_with_one_idempotency_key_is_stored_once(
    client: Any, redis: aioredis.Redis
) -> None:
    user = await user_id(client)
    status, first, headers = await post(client, "once", "k-1")
    assert status == 201 and "Idempotent-Replayed" not in headers
    status, again, headers = await post(client, "once", "k-1")
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    assert again == first
    assert [m["id"] for m in await history(client)] == [first["message"]["id"]]
    # Remembered for ten minutes, in the room's slot.
    assert 590 < await redis.ttl(idempotency_record_key("general", user, "k-1")) <= 600
    # Another key, or none, is another message.
    status, other, _ = await post(client, "once", "k-2")
    assert status == 201 and other["message"]["id"] != first["message"]["id"]
    status, _, _ = await post(client, "once", None)
    assert status == 201
    assert len(await history(client)) == 3


async def test_a_key_used_again_in_another_room_gets_the_first_message(client: Any) -> None:
    await user_id(client)
    status, first, _ = await post(client, "once", "k-1")
    assert status == 201
    headers = {"Idempotency-Key": "k-1"}
    resp = await client.post("/api/rooms/other/messages", json={"text": "once"}, headers=headers)
    assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == first  # (the message of the room it went to first)
    resp = await client.get("/api/rooms/other/messages")
    assert (await resp.json())["messages"] == []
    # Another key in the other room is another message, and a key first used
    # there is answered there.
    resp = await client.post(
        "/api/rooms/other/messages", json={"text": "two"}, headers={"Idempotency-Key": "k-2"}
    )
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    status, again, headers = await post(client, "two", "k-2")
    assert status == 201 and headers["Idempotent-Replayed"] == "true"
    assert again == await resp.json()
    assert [m["text"] for m in await history(client)] == ["once"]


async def test_a_key_refused_in_one_room_belongs_to_the_room_it_is_stored_in(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(await make_app(address_rooms_per_min=1))
    await user_id(client)
    assert (await post(client, "makes general", None))[0] == 201  # (the one new room)
    headers = {"Idempotency-Key": "k-1"}
    fresh = "/api/rooms/fresh/messages"
    resp = await client.post(fresh, json={"text": "x"}, headers=headers)
    assert resp.status == 429  # a new room too many: nothing stored
    status, stored, replayed = await post(client, "x", "k-1")
    assert status == 201 and "Idempotent-Replayed" not in replayed
    # Sent again where it was refused, it is answered with what was stored.
    resp = await client.post(fresh, json={"text": "x"}, headers=headers)
    assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    assert await resp.json() == stored


async def test_a_websocket_message_repeated_with_one_key_is_stored_once(client: Any) -> None:
    await user_id(client)
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_json({"type": "message", "text": "hi", "ref": 1, "key": "w-1"})
        first = await answer(ws, "ack")
        await ws.send_json({"type": "message", "text": "hi", "ref": 2, "key": "w-1"})
        again = await answer(ws, "ack")
        assert again["ref"] == 2 and again["message"] == first["message"]
        # The same key over HTTP, from the same session: the same message.
        status, body, _ = await post(client, "hi", "w-1")
        assert status == 201 and body["message"] == first["message"]
    assert [m["id"] for m in await history(client)] == [first["message"]["id"]]


async def test_the_same_key_from_another_session_is_another_message(client: Any) -> None:
    alice = await user_id(client)
    status, from_alice, _ = await post(client, "mine", "shared")
    assert status == 201
    client.session.cookie_jar.clear()
    assert await user_id(client) != alice
    status, from_bob, headers = await post(client, "mine", "shared")
    assert status == 201 and "Idempotent-Replayed" not in headers
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_json({"type": "message", "text": "mine", "ref": 1, "key": "shared"})
        over_ws = await answer(ws, "ack")
    assert over_ws["message"] == from_bob["message"]
    assert from_bob["message"]["id"] != from_alice["message"]["id"]
    assert len(await history(client)) == 2


async def test_a_retry_costs_nothing_from_the_rate_limit(
    make_app: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    # A budget of two messages, refilled once every 100 s.
    client = await aiohttp_client(await make_app(rate_limit_per_s=0.01, rate_limit_burst=2))
    await user_id(client)
    status, first, _ = await post(client, "one", "r-1")
    assert status == 201
    status, again, _ = await post(client, "one", "r-1")  # given back
    assert (status, again) == (201, first)
    status, _, _ = await post(client, "two", "r-2")
    assert status == 201
    status, body, _ = await post(client, "three", "r-3")
    assert status == 429 and body["error"]["code"] == "rate_limited"
    # The budget is spent, yet a retry of a stored message gets its answer.
    status, again, headers = await post(client, "one", "r-1")
    assert (status, again) == (201, first) and headers["Idempotent-Replayed"] == "true"
    assert len(await history(client)) == 2


async def test_a_retry_after_the_message_was_trimmed_gets_the_first_answer(
    client: Any, redis: aioredis.Redis
) -> None:
    await user_id(client)
    status, first, _ = await post(client, "soon trimmed", "t-1")
    assert status == 201
    await redis.xtrim(stream_key("general"), maxlen=0, approximate=False)
    status, again, _ = await post(client, "soon trimmed", "t-1")
    assert (status, again) == (201, first)
    assert await redis.xlen(stream_key("general")) == 0


async def test_the_record_lasts_no_longer_than_the_room(
    make_app: Callable[..., Any], aiohttp_client: Callable[..., Any], redis: aioredis.Redis
) -> None:
    client = await aiohttp_client(await make_app(room_ttl_s=30))
    user = await user_id(client)
    status, _, _ = await post(client, "short-lived room", "s-1")
    assert status == 201
    assert 0 < await redis.ttl(idempotency_record_key("general", user, "s-1")) <= 30


@pytest.mark.parametrize("key", ["", "x" * 65, "two words", "tab\there"])
async def test_a_malformed_idempotency_key_is_refused(client: Any, key: str) -> None:
    await user_id(client)
    status, body, _ = await post(client, "never stored", key)
    assert status == 400 and "Idempotency-Key" in body["error"]["message"]
    assert await history(client) == []


@pytest.mark.parametrize("key", ["", "x" * 65, "é", 7, None])
async def test_a_malformed_websocket_key_gets_an_error_frame(client: Any, key: Any) -> None:
    await user_id(client)
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        frame = {"type": "message", "text": "x", "ref": 1, "key": key}
        await ws.send_str(json.dumps(frame))
        if key is None:  # null is the same as no key
            assert (await answer(ws, "ack"))["ref"] == 1
            return
        error = await answer(ws, "error")
        assert error["ref"] == 1 and "'key'" in error["error"]["message"]
        await ws.send_json({"type": "message", "text": "still open", "ref": 2, "key": "ok"})
        assert (await answer(ws, "ack"))["ref"] == 2
    assert [m["text"] for m in await history(client)] == ["still open"]


# ------------------------------------------------------------------ a lost answer

PAUSE_MS = 1500  # Redis answers nobody for this long
GIVE_UP_S = 0.5  # the client's patience, shorter


@contextlib.asynccontextmanager
async def redis_paused(redis: aioredis.Redis) -> AsyncIterator[None]:
    """Redis stops answering every client for PAUSE_MS; left when it answers again."""
    await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    try:
        yield
    finally:
        # Paused too: this returns once Redis answers again.
        await redis.ping()


@contextlib.asynccontextmanager
async def frames(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[asyncio.Queue[Any]]:
    """The acks and errors of a WebSocket, as they come."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame["type"] in ("ack", "error"):
                    queue.put_nowait(frame)

    async with in_background(read()):
        yield queue


def raw_post(url: str, cookies: str, text: str, key: str) -> bytes:
    body = json.dumps({"text": text}).encode()
    head = (
        f"POST {ROOM}/messages HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
        f"Cookie: {cookies}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@pytest.mark.processes
@pytest.mark.timeout(60)
async def test_a_post_whose_answer_was_lost_to_a_redis_pause_is_stored_once_on_retry(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2)
    async with user(server.url) as http:
        cookies = "; ".join(
            f"{k}={v.value}" for k, v in http.cookie_jar.filter_cookies(URL(server.url)).items()
        )
        parts = urlsplit(server.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            async with redis_paused(redis):
                writer.write(raw_post(server.url, cookies, "lost answer", "lost-1"))
                # The client gives up waiting (its connection stays open, so the
                # server goes on and stores the message once Redis answers).
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(GIVE_UP_S):
                        await reader.readuntil(b"\r\n\r\n")
            async with http.post(
                f"{ROOM}/messages",
                json={"text": "lost answer"},
                headers={"Idempotency-Key": "lost-1"},
            ) as resp:
                assert resp.status == 201
                retried = (await resp.json())["message"]
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                first = json.loads(await reader.readexactly(length))["message"]
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 201")
        assert first == retried
        async with http.get(f"{ROOM}/messages") as resp:
            assert [m["id"] for m in (await resp.json())["messages"]] == [first["id"]]
    assert "Traceback" not in server.log()


@pytest.mark.processes
@pytest.mark.timeout(60)
async def test_a_websocket_message_whose_ack_was_lost_to_a_redis_pause_is_stored_once_on_retry(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2)
    frame = {"type": "message", "text": "lost ack", "key": "lost-ws"}
    async with user(server.url) as http:
        async with (
            http.ws_connect(f"{ROOM}/ws") as slow,
            frames(slow) as slow_answers,
            http.ws_connect(f"{ROOM}/ws") as other,
            frames(other) as other_answers,
        ):
            async with redis_paused(redis):
                await slow.send_json({**frame, "ref": "first"})
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(GIVE_UP_S):
                        await slow_answers.get()
            # The client tries again (on another connection, as after a reconnect).
            await other.send_json({**frame, "ref": "retry"})
            async with asyncio.timeout(10):
                retried = await other_answers.get()
                first = await slow_answers.get()
        assert (first["type"], first["ref"]) == ("ack", "first")
        assert (retried["type"], retried["ref"]) == ("ack", "retry")
        assert first["message"] == retried["message"]
        async with http.get(f"{ROOM}/messages") as resp:
            assert [m["id"] for m in (await resp.json())["messages"]] == [first["message"]["id"]]
    assert "Traceback" not in server.log()
