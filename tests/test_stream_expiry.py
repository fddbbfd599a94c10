"""Signed-in streams end with their sign-in: ``auth_expiring`` first, then
the end (SSE ``auth_expired``, WebSocket close 4401), unless a newer token
came: in band on a WebSocket, or through ``POST /api/auth`` for a session.
In-process, with the worker's heartbeat ticking; real tokens, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import aiotools

from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import ServerProcess, sse_events, subscribe_on_worker, user
from .test_signin import bearer

ROOM = "/api/rooms/lobby"


@contextlib.asynccontextmanager
async def beating(make_app: Any, aiohttp_client: Any) -> AsyncIterator[Any]:
    """A client of an app whose heartbeat ticks, as in a worker (leeway 0)."""
    app = await make_app(auth_jwt_secret=SECRET, auth_leeway_s=0, heartbeat_s=0.1)
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    timer = aiotools.create_timer(app[keys.HEARTBEAT].tick, 0.1)
    try:
        yield client
    finally:
        await aiotools.cancel_and_wait(timer)


async def sse_until_end(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """The events of a stream other than messages and presence, until it ends."""
    seen = []
    async with asyncio.timeout(10):
        async for event in sse_events(resp):
            if event.event not in ("message", "presence", "presence_diff"):
                seen.append((event.event, event.data))
    return seen


async def test_an_sse_stream_is_warned_then_ends_with_its_token(
    make_app: Any, aiohttp_client: Any
) -> None:
    async with beating(make_app, aiohttp_client) as client:
        exp = int(time.time()) + 2
        headers = bearer(sign(claims(exp=exp)))
        async with client.get(f"{ROOM}/events", headers=headers) as resp:
            assert resp.status == 200
            seen = await sse_until_end(resp)
        assert seen == [
            ("auth_expiring", json.dumps({"expires_at": exp}).replace(" ", "")),
            ("auth_expired", "{}"),
        ]
        assert time.time() >= exp


async def next_frame(ws: Any, *kinds: str) -> Any:
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return msg
        frame = json.loads(msg.data)
        if frame["type"] in kinds:
            return frame


async def test_a_websocket_refreshes_in_band_or_is_closed_4401(
    make_app: Any, aiohttp_client: Any
) -> None:
    async with beating(make_app, aiohttp_client) as client:
        exp = int(time.time()) + 2
        async with client.ws_connect(f"{ROOM}/ws", headers=bearer(sign(claims(exp=exp)))) as ws:
            assert await next_frame(ws, "auth_expiring") == {
                "type": "auth_expiring",
                "expires_at": exp,
            }
            await ws.send_json({"type": "auth", "token": sign(claims(sub="bob")), "ref": 1})
            refused = await next_frame(ws, "error")
            assert refused["error"]["code"] == "invalid_token"
            later = int(time.time()) + 600
            await ws.send_json({"type": "auth", "token": sign(claims(exp=later)), "ref": 2})
            assert await next_frame(ws, "auth") == {"type": "auth", "ref": 2, "expires_at": later}
            await asyncio.sleep(max(0.0, exp - time.time()) + 0.5)  # (past the first exp)
            await ws.send_json({"type": "message", "text": "still here", "ref": 3})
            assert (await next_frame(ws, "ack"))["message"]["text"] == "still here"
        soon = bearer(sign(claims(exp=int(time.time()) + 2)))
        async with client.ws_connect(f"{ROOM}/ws", headers=soon) as ws:
            closed = await next_frame(ws)
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4401)


async def test_a_session_refreshed_elsewhere_keeps_its_streams(
    make_app: Any, aiohttp_client: Any
) -> None:
    async with beating(make_app, aiohttp_client) as client:
        exp = int(time.time()) + 2
        assert (await client.post("/api/auth", json={"token": sign(claims(exp=exp))})).ok
        async with (
            client.get(f"{ROOM}/events") as refreshed,
            client.ws_connect(f"{ROOM}/ws") as ws,
        ):
            later = int(time.time()) + 600
            resp = await client.post("/api/auth", json={"token": sign(claims(exp=later))})
            assert (await resp.json())["expires_at"] == later
            async with client.get(f"{ROOM}/events") as other:
                await asyncio.sleep(max(0.0, exp - time.time()) + 0.5)  # (past the first exp)
                posted = await client.post(f"{ROOM}/messages", json={"text": "after"})
                assert posted.status == 201
                for stream in (refreshed, other):
                    async with asyncio.timeout(5):
                        async for event in sse_events(stream):
                            assert event.event != "auth_expired"
                            if event.event == "message":
                                assert json.loads(event.data)["text"] == "after"
                                break
                # The session's WebSocket, open since before the refresh, is too.
                frame = await next_frame(ws, "message")
                assert frame["message"]["text"] == "after", frame
        # Not refreshed: the session's stream ends.
        soon = int(time.time()) + 2
        assert (await client.post("/api/auth", json={"token": sign(claims(exp=soon))})).ok
        async with client.get(f"{ROOM}/events") as resp:
            assert [kind for kind, _ in await sse_until_end(resp)] == [
                "auth_expiring",
                "auth_expired",
            ]


async def test_signing_out_ends_the_sessions_streams_only(
    make_app: Any, aiohttp_client: Any
) -> None:
    async with beating(make_app, aiohttp_client) as client:
        assert (await client.post("/api/auth", json={"token": sign(claims())})).ok
        headers = bearer(sign(claims()))  # the same user, as a program
        async with (
            client.get(f"{ROOM}/events") as events,
            client.ws_connect(f"{ROOM}/ws") as ws,
            client.ws_connect(f"{ROOM}/ws", headers=headers) as program,
        ):
            assert events.status == 200
            await next_frame(ws, "presence")
            await next_frame(program, "presence")
            assert (await client.delete("/api/auth")).status == 204
            assert [kind for kind, _ in await sse_until_end(events)] == ["signed_out"]
            closed = await next_frame(ws)
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4001)
            await program.send_json({"type": "message", "text": "still here", "ref": 1})
            assert (await next_frame(program, "ack"))["message"]["text"] == "still here"


async def test_a_sign_out_ends_the_sessions_streams_on_every_worker(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET})
    async with user(server.url) as http, contextlib.AsyncExitStack() as stack:
        async with http.post("/api/auth", json={"token": sign(claims())}) as resp:
            assert resp.status == 200
        streams = [
            await subscribe_on_worker(stack, http, kind, worker)
            for kind in ("sse", "ws")
            for worker in ("0", "1")
        ]
        async with http.delete("/api/auth") as resp:
            assert resp.status == 204
        async with asyncio.timeout(5):
            for stream in streams:
                await stream.closed.wait()
