"""Canaries for :mod:`server.web.aiohttp_compat`: what the server relies on
of aiohttp beyond its documented API, checked on a real server and real
sockets (on both event loops). Each fails when aiohttp changes under it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from server.web.aiohttp_compat import (
    CHECKED_ON,
    LATE_ATTRIBUTES,
    LATE_WEBSOCKET_ATTRIBUTES,
    MalformedRequests,
    RequestHandlerBase,
    can_upgrade,
    drained,
    preset,
    protocol_factory,
    protocol_of,
    send_continue,
)
from server.web.aiohttp_sse_compat import EventStream
from server.web.edge import EdgeHandler

from .support import checked_release, shadowed_names

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def test_aiohttp_is_a_release_these_were_checked_on() -> None:
    """A new aiohttp: run these canaries, read the module's list again, then add it."""
    assert checked_release(version("aiohttp"), CHECKED_ON), version("aiohttp")


def test_the_edge_handler_shadows_no_name_of_aiohttps_handler() -> None:
    """A slot or method of the edge's handler named as one of aiohttp's would
    silently take its place."""
    assert not shadowed_names(EdgeHandler)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Probe(RequestHandlerBase):
    """Notes, for every read, what the base class tells of it."""

    __slots__ = ("reads",)

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # (parsed before, parsed after, upgraded before, newest payload after)
        self.reads: list[tuple[int, int, bool, StreamReader | None]] = []

    def data_received(self, data: bytes) -> None:
        before, upgraded = self.requests_parsed, self.upgraded
        super().data_received(data)
        self.reads.append((before, self.requests_parsed, upgraded, self.newest_payload()))


@contextlib.asynccontextmanager
async def served(app: web.Application, **runner: Any) -> AsyncIterator[tuple[web.Server, int]]:
    """``app`` served with :class:`Probe` connections made by ``protocol_factory``."""
    app_runner = web.AppRunner(app, shutdown_timeout=1, **runner)
    await app_runner.setup()
    assert app_runner.server is not None
    loop = asyncio.get_running_loop()
    factory = protocol_factory(
        Probe, app_runner.server, loop=loop, keepalive_timeout=30.0, access_log=None
    )
    listener = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield app_runner.server, listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await app_runner.cleanup()


async def test_request_handler_base_reads_what_aiohttp_keeps_of_a_connection() -> None:
    seen: dict[str, Any] = {}

    async def echo(request: web.Request) -> web.Response:
        seen["protocol"], seen["payload"] = protocol_of(request), request.content
        return web.Response(text=str(len(await request.read())))

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/ws", ws_echo)
    async with served(app) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A handler joins its manager (the runner's server) with its connection.
        await until(lambda: server.connections)
        (probe,) = server.connections
        assert isinstance(probe, Probe)
        assert probe.event_loop is asyncio.get_running_loop()
        assert probe.awaiting_request() and probe.requests_parsed == 0
        assert probe.newest_payload() is None and probe.upgraded is False
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n12345")
        # The read that completed the headers counted the request, and the
        # request's unfinished body is the newest payload.
        await until(lambda: any(after == 1 for _, after, _, _ in probe.reads))
        before, _, upgraded, payload = next(r for r in probe.reads if r[1] == 1)
        assert (before, upgraded) == (0, False)
        assert payload is not None and not payload.is_eof()
        assert not probe.awaiting_request()  # answering one
        writer.write(b"67890")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"10"
        assert seen["protocol"] is probe and seen["payload"] is payload
        await until(probe.awaiting_request)  # the next request's turn
        # A WebSocket: once upgraded, what comes are frames, not requests.
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("one")
                assert await ws.receive_str() == "one"
                (upgraded_probe,) = [p for p in server.connections if p is not probe]
                assert isinstance(upgraded_probe, Probe) and upgraded_probe.upgraded is True
                assert upgraded_probe.reads[-1][:3] == (1, 1, True)
    # The runner's cleanup closed the connection still open, as its manager's.
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


def stalled_stream(state: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that writes to a client that does not read until writing
    pauses, then waits for it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _stall(request, state)

    return handler


async def _stall(request: web.Request, state: dict[str, Any]) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    protocol = state["protocol"] = protocol_of(request)
    transport = request.transport
    assert transport is not None
    state["not paused"] = not protocol.writing_paused
    await drained(protocol)  # not paused: at once
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport.set_write_buffer_limits(high=0)
    for _ in range(1000):
        if protocol.writing_paused:
            break
        transport.write(b"x" * 65536)
    # More than the kernel holds of it, client's side included: only the
    # client reading lets writes resume.
    transport.write(b"x" * (4 << 20))
    state["paused"].set()
    await drained(protocol)
    state["resumed"].set()
    return response


async def test_drained_waits_while_writing_is_paused_and_fails_once_the_connection_is_lost() -> (
    None
):
    state: dict[str, Any] = {"paused": asyncio.Event(), "resumed": asyncio.Event()}
    app = web.Application()
    app.router.add_get("/", stalled_stream(state))
    async with served(app) as (_, port):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(5):
            await state["paused"].wait()
        assert state["not paused"] and state["protocol"].writing_paused
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(state["resumed"].wait()), 0.2)
        async with asyncio.timeout(10):
            while not state["resumed"].is_set():
                assert await reader.read(1 << 20)  # the client reads: writes resume
        writer.close()
        protocol = state["protocol"]
        await until(lambda: protocol.transport is None)
        with pytest.raises(ConnectionError):
            await drained(protocol)


async def serve(app: web.Application, **runner: Any) -> tuple[web.AppRunner, int]:
    app_runner = web.AppRunner(app, shutdown_timeout=1, **runner)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    return app_runner, app_runner.addresses[0][1]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_send_continue_answers_100_and_leaves_the_answers_size_alone() -> None:
    """The interim answer does not count in the response's size (the access log's ``%b``)."""

    async def expect(request: web.Request) -> None:
        if request.headers.get("Expect"):
            await send_continue(request)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=(await request.read()).decode())

    access = logging.getLogger("test_compat.access")
    access.setLevel(logging.INFO)
    sizes = Records()
    access.addHandler(sizes)
    app = web.Application()
    app.router.add_post("/", echo, expect_handler=expect)
    runner, port = await serve(app, access_log=access, access_log_format="%b")
    try:
        for extra in (b"", b"Expect: 100-continue\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n" + extra)
            writer.write(b"\r\n")
            if extra:
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(5) == b"hello"
            writer.close()
        await until(lambda: len(sizes.records) == 2)
        plain, continued = (record.getMessage() for record in sizes.records)
        assert plain == continued and int(plain) > 0
    finally:
        access.removeHandler(sizes)
        await runner.cleanup()


async def test_a_websocket_frame_is_written_in_one_step_and_a_bad_handshake_raises() -> None:
    """A frame aiohttp sends is written before its coroutine first yields, so
    the hub's frames, written straight to the transport, cannot split it; and
    a handshake header that is not UTF-8 still makes ``can_prepare`` raise."""
    seen: dict[str, Any] = {}

    async def ws_once(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False)
        try:
            ws.can_prepare(request)
        except UnicodeEncodeError:
            seen["raised"] = True
        seen["upgrade"] = can_upgrade(ws, request)
        if not seen["upgrade"]:
            return web.Response(status=400)
        await ws.prepare(request)
        sending = ws.send_str("x" * 1000)
        try:
            sending.send(None)
            seen["one step"] = False
            sending.close()
        except StopIteration:
            seen["one step"] = True
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_once)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert await ws.receive_str() == "x" * 1000
        assert seen == {"upgrade": True, "one step": True}
        seen.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HANDSHAKE + b"Sec-WebSocket-Version: \xff\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 400")
        writer.close()
        assert seen == {"raised": True, "upgrade": False}
    finally:
        await runner.cleanup()


async def send_raw(port: int, *parts: bytes) -> bytes:
    """Send ``parts`` (one at a time, each after an answer to the one before
    when there are several) and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts[:-1]:
            writer.write(part)
            await reader.readuntil(b"\r\n\r\n")
        writer.write(parts[-1])
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


MALFORMED: list[tuple[tuple[bytes, ...], Callable[[BaseException], bool]]] = [
    # A request that does not parse (a chunk size that is not a number).
    (
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",),
        lambda exc: isinstance(exc, HttpProcessingError) and exc.code == 400,
    ),
    # A body that is not what it says, found when aiohttp reads what the
    # handler left unread.
    (
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\n",
            b"not gzip",
        ),
        lambda exc: isinstance(exc, web.RequestPayloadError),
    ),
]


@pytest.mark.parametrize(("parts", "is_expected"), MALFORMED)
async def test_aiohttp_logs_malformed_requests_with_the_exception_malformed_requests_drops(
    parts: tuple[bytes, ...], is_expected: Callable[[BaseException], bool]
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    logger = logging.getLogger("aiohttp.server")
    found = Records()
    logger.addHandler(found)
    app = web.Application()
    app.router.add_route("*", "/", hello)
    runner, port = await serve(app)
    quiet = MalformedRequests()
    try:
        await send_raw(port, *parts)
        await until(lambda: found.records)
        (record,) = found.records
        assert record.levelno == logging.ERROR and record.exc_info
        assert is_expected(record.exc_info[1])  # type: ignore[arg-type]
        # What the filter makes of it: nothing, the logger not being at debug.
        found.records.clear()
        logger.addFilter(quiet)
        await send_raw(port, *parts)
        assert not found.records
    finally:
        logger.removeFilter(quiet)
        logger.removeHandler(found)
        await runner.cleanup()


async def test_a_response_gets_no_attribute_after_preset_each_with_a_class_default() -> None:
    """:func:`preset` names every attribute an open stream's response gets after
    its constructor (a cookie set, prepared, a WebSocket reading), each a
    class attribute of aiohttp's."""
    for name in LATE_WEBSOCKET_ATTRIBUTES:
        assert hasattr(web.WebSocketResponse, name), name
    for name in LATE_ATTRIBUTES:
        assert hasattr(EventStream, name), name
    late: dict[str, set[str]] = {}

    async def ws_stream(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, compress=False)
        preset(ws, LATE_WEBSOCKET_ATTRIBUTES)
        names = set(vars(ws))
        ws.set_cookie("visitor", "1")
        await ws.prepare(request)
        await ws.send_str("ready")
        assert (await ws.receive()).data == "hello"
        late["ws"] = set(vars(ws)) - names  # (closing sets more: not while it is open)
        await ws.receive()
        return ws

    async def sse_stream(request: web.Request) -> web.StreamResponse:
        response = EventStream()
        preset(response)
        names = set(vars(response))
        response.set_cookie("visitor", "1")
        await response.prepare(request)
        await response.send("ready")
        late["sse"] = set(vars(response)) - names
        return response

    app = web.Application()
    app.router.add_get("/ws", ws_stream)
    app.router.add_get("/sse", sse_stream)
    runner, port = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                assert await ws.receive_str() == "ready"
                await ws.send_str("hello")
                await ws.close()
            async with session.get(f"http://127.0.0.1:{port}/sse") as resp:
                assert b"ready" in await resp.content.readuntil(b"\n\n")
        async with asyncio.timeout(5):
            while len(late) < 2:
                await asyncio.sleep(0.01)
        assert late == {"ws": set(), "sse": set()}
    finally:
        await runner.cleanup()
