"""Canaries for :mod:`server.web.aiohttp_sse_compat`: aiohttp-sse's ping task,
as :class:`~server.web.aiohttp_sse_compat.EventStream` expects it, checked on
a real server (on both event loops). Each fails when aiohttp-sse changes
under it."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from server.web.aiohttp_sse_compat import CHECKED_ON, EventStream

from .support import checked_release, shadowed_names

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def test_aiohttp_sse_is_a_release_these_were_checked_on() -> None:
    """A new aiohttp-sse: run these canaries, read the module's list again, then add it."""
    assert checked_release(version("aiohttp-sse"), CHECKED_ON), version("aiohttp-sse")


def test_the_event_stream_replaces_only_the_ping() -> None:
    assert not shadowed_names(
        EventStream, overrides={"_ping", "_send_headers_immediately", "prepare"}
    )
    assert "_ping" in vars(EventSourceResponse)


async def fetch_with(handler: Handler) -> bytes:
    """What a client reads of ``handler``'s answer."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
            async with asyncio.timeout(5), session.get(url) as answer:
                return await answer.read()
    finally:
        await runner.cleanup()


async def test_event_source_response_runs_its_ping_as_the_task_wait_and_stop_follow() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = EventSourceResponse(ping_interval=30)
        await response.prepare(request)
        task = response._ping_task
        seen["ping task"] = isinstance(task, asyncio.Task) and task.get_coro().__qualname__
        seen["connected"] = response.is_connected()
        response.stop_streaming()  # cancels it
        async with asyncio.timeout(2):
            await response.wait()
        seen["cancelled"] = task is not None and task.cancelled()
        seen["after"] = response.is_connected()
        return response

    await fetch_with(handler)
    assert seen == {
        "ping task": "EventSourceResponse._ping",
        "connected": True,
        "cancelled": True,
        "after": False,
    }


async def test_an_event_stream_keeps_no_ping_task_and_follows_the_future_it_ends_with() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = EventStream()
        await response.prepare(request)
        async with asyncio.timeout(2):
            await response.wait()  # the ping task returned at once
        seen["no ping"] = not response.is_connected()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with response:
            response.end_with(done)
            seen["follows"] = response.is_connected()
            await response.write(b"data: one\n\n")
        # Leaving ``async with`` stopped the stream: it cancelled ``done``.
        seen["stopped"] = done.cancelled() and not response.is_connected()
        return response

    assert await fetch_with(handler) == b"data: one\n\n"
    assert seen == {"no ping": True, "follows": True, "stopped": True}


async def test_an_event_stream_sends_its_headers_with_its_first_write() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = EventStream()
        writer = request.writer
        sent = writer.output_size
        await response.prepare(request)
        seen["prepared"] = writer.output_size - sent  # (nothing sent yet)
        await response.write(b"retry: 1000\n\n")
        seen["written"] = writer.output_size > sent
        return response

    assert await fetch_with(handler) == b"retry: 1000\n\n"
    assert seen == {"prepared": 0, "written": True}


async def test_preparing_for_a_client_that_reset_raises_a_connection_error() -> None:
    """A client resets its request while the handler awaits something else (a
    stream being admitted): aiohttp-sse's ``prepare`` then fails an assertion
    (the request has no transport), the event stream's raises
    ``ConnectionResetError``, which aiohttp takes as a client gone."""
    outcomes: dict[str, str] = {}
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        started.set()
        async with asyncio.timeout(5):
            while request.transport is not None:  # (until the reset arrives)
                await asyncio.sleep(0.01)
        for response in (EventSourceResponse(), EventStream()):
            try:
                await response.prepare(request)
                outcomes[type(response).__name__] = "prepared"
            except (AssertionError, ConnectionResetError) as exc:
                outcomes[type(response).__name__] = type(exc).__name__
        return web.Response()

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        async with asyncio.timeout(5):
            await started.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # (a reset)
        async with asyncio.timeout(5):
            while len(outcomes) < 2:
                await asyncio.sleep(0.01)
    finally:
        await runner.cleanup()
    assert outcomes == {
        "EventSourceResponse": "AssertionError",
        "EventStream": "ConnectionResetError",
    }
