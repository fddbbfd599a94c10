"""What an open stream keeps in its worker: nothing that only its opening needed.

Thousands of streams stay open for hours, so whatever each one holds is the
server's memory per connection (the benchmark's idle scenario). Once a
stream is set up, its response's headers and cookies have gone out and its
session has been read (and saved, when new): none of them is kept, and no
coroutine frame is held for aiohttp-session's middleware or for a
generator-based context manager; and the response's ``__dict__`` has all
its keys from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp_session
import pytest
from aiohttp import web

from server.web.aiohttp_compat import LATE_ATTRIBUTES, LATE_WEBSOCKET_ATTRIBUTES, preset
from server.web.aiohttp_sse_compat import EventStream

from .support import sse_events

ROOM = "/api/rooms/general"


@contextlib.asynccontextmanager
async def open_stream(
    visitor: aiohttp.ClientSession, client: Any, kind: str
) -> AsyncIterator[None]:
    """A stream of ``kind`` of a new visitor, held open once its first event came."""
    if kind == "ws":
        async with visitor.ws_connect(client.make_url(f"{ROOM}/ws")) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "presence"
            yield
    else:
        async with visitor.get(client.make_url(f"{ROOM}/events")) as resp:
            assert resp.status == 200
            events = sse_events(resp)
            async with asyncio.timeout(10):
                assert (await anext(events)).event == "presence"
            yield


def live(type_name: str) -> set[str]:
    """The qualified names of the live objects of that type (coroutines, async generators)."""
    return {o.__qualname__ for o in gc.get_objects() if type(o).__name__ == type_name}


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_an_open_stream_keeps_nothing_of_its_opening(client: Any, kind: str) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # (a cookie of 127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=jar) as visitor, open_stream(visitor, client, kind):
        # A new visitor: the stream's response set its session cookie.
        assert visitor.cookie_jar.filter_cookies(client.make_url("/"))
        gc.collect()
        streams = [o for o in gc.get_objects() if isinstance(o, web.StreamResponse) and o.prepared]
        assert len(streams) == 1
        response = streams[0]
        assert not response.headers and not response.cookies
        # Its attributes are those it had from the start (none set later, which
        # would grow its __dict__ into a larger table).
        new = web.WebSocketResponse() if kind == "ws" else EventStream()
        preset(new, LATE_WEBSOCKET_ATTRIBUTES if kind == "ws" else LATE_ATTRIBUTES)
        assert set(vars(response)) <= set(vars(new))
        assert not [o for o in gc.get_objects() if isinstance(o, aiohttp_session.Session)]
        assert "session_middleware.<locals>.factory" not in live("coroutine")
        assert "Connections.opened" not in live("async_generator")
        # (What is held instead: the handler's own frame.)
        handler = "WsHandler.websocket" if kind == "ws" else "SseHandler.events"
        assert handler in live("coroutine")
