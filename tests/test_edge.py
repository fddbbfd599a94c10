"""The edge: deadlines for headers, bodies and idle connections, bounded headers, and
cut-offs that leave nothing in the kernel.

In-process tests serve a small app through :class:`server.web.edge.Edge` on a
real socket (on both event loops); the others run the real server, with
several workers. (What the edge reads of aiohttp's request handler has its
canaries in ``tests/test_compat_aiohttp.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web

from harness.redis_servers import RedisProcess
from server.common.config import Config
from server.core.close_reason import IDLE, OVERFLOW
from server.web import middlewares
from server.web.edge import HEAD_MAX_BYTES, Edge, EdgeHandler
from server.web.sockets import SEND_BUFFER_BYTES

from .fakes import MemoryBackend, live, make_hub, message
from .support import ServerProcess, drain, running_server, stalled_client, worker_rss_kb

REQUEST_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 4.0
# A deadline is acted on within a sweep (a quarter of the timeout) of passing;
# the rest is for a loaded machine.
SLACK_S = 1.0


# ------------------------------------------------------------------ helpers


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """What the server sent until it closed the connection (reset or EOF); False on timeout."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(1 << 16):
                data += chunk
    except ConnectionResetError:
        return data, True
    except TimeoutError:
        return data, False
    return data, True


async def closed_at_the_deadline(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed the connection, which it must do when
    ``quick``'s request_timeout_s (0.4 s) from now passes (a sweep early, SLACK_S late)."""
    started = time.monotonic()
    data, closed = await read_until_closed(reader, 3)
    took = time.monotonic() - started
    assert closed, data
    assert 0.3 <= took <= 0.4 + SLACK_S, took
    return data


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers, body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status_line, *lines = head.rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


class Clients:
    """Raw connections, all closed when the test ends."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    await opened.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def request(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------- in-process, both loops


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def echo(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def ignore_body(request: web.Request) -> web.Response:
    return web.Response(text="not read")


BIG_BYTES = 512 * 1024  # far more than the kernel takes (128 KiB a socket)


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * BIG_BYTES)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str(msg.data)
    return ws


@contextlib.asynccontextmanager
async def edge_app(config: Config) -> AsyncIterator[tuple[Edge, int]]:
    """A small app served through the edge, as a worker serves the chat; its port."""
    app = web.Application(middlewares=[middlewares.guard(config, middlewares.ThrottledErrorLog())])
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_post("/ignore", ignore_body)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    edge = Edge(runner, sock, config)
    await edge.start()
    try:
        yield edge, sock.getsockname()[1]
    finally:
        await edge.stop()
        await runner.cleanup()


def handlers(edge: Edge) -> list[EdgeHandler]:
    server = edge.runner.server
    assert server is not None
    found = server.connections
    assert all(isinstance(h, EdgeHandler) for h in found)
    return found  # type: ignore[return-value]


@pytest.fixture
def quick(make_config: Callable[..., Config]) -> Config:
    return make_config(request_timeout_s=0.4, keepalive_timeout_s=30.0)


async def test_edge_handlers_time_a_connection_from_its_start_through_its_body(
    quick: Config, clients: Clients
) -> None:
    async with edge_app(quick) as (edge, port):
        reader, writer = await clients.open(port)
        async with asyncio.timeout(2):
            while not handlers(edge):
                await asyncio.sleep(0.01)
        (handler,) = handlers(edge)
        # A new connection is timed from its start.
        assert handler._head_since > 0 and handler in edge.deadlines._due
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n")
        async with asyncio.timeout(2):
            while handler._head_bytes == 0:
                await asyncio.sleep(0.01)
        assert handler.awaiting_request() and handler.requests_parsed == 0
        writer.write(b"\r\n12345")
        async with asyncio.timeout(2):
            while handler._head_since:
                await asyncio.sleep(0.01)
        assert handler.requests_parsed == 1 and handler._body is not None
        assert not handler._body.is_eof() and handler._head_bytes == 0
        writer.write(b"67890")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"10")
        assert handler._head_since == 0 and (handler._body is None or handler._body.is_eof())
        # The sweep lets go of a connection with nothing due.
        async with asyncio.timeout(2):
            while handler in edge.deadlines._due:
                await asyncio.sleep(0.01)
        assert handler.upgraded is False


async def test_headers_that_do_not_arrive_in_time_close_the_connection(
    quick: Config, clients: Clients
) -> None:
    async with edge_app(quick) as (_, port):
        reader, writer = await clients.open(port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert await closed_at_the_deadline(reader) == b""
        # A connection that never sends anything goes the same way.
        reader, _ = await clients.open(port)
        assert await closed_at_the_deadline(reader) == b""


async def test_keepalive_connection_times_its_next_request_from_its_first_bytes(
    quick: Config,
    clients: Clients,
) -> None:
    async with edge_app(quick) as (_, port):
        reader, writer = await clients.open(port)
        writer.write(request("/"))
        assert (await read_response(reader))[0] == 200
        # Idle for longer than request_timeout_s: keep-alive, not closed.
        await asyncio.sleep(1.0)
        writer.write(request("/"))
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET / HTTP/1.1\r\nHo")
        assert await closed_at_the_deadline(reader) == b""


async def test_a_body_that_stalls_is_answered_408_and_the_connection_closed(
    quick: Config,
    clients: Clients,
) -> None:
    async with edge_app(quick) as (_, port):
        reader, writer = await clients.open(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        data = await closed_at_the_deadline(reader)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), data
        assert b"Connection: close" in head
        assert json.loads(body)["error"]["code"] == "request_timeout"
        # A body that keeps coming, in time, is fine.
        reader, writer = await clients.open(port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 6\r\n\r\n")
        for part in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.1)
            writer.write(part)
        assert (await read_response(reader))[::2] == (200, b"6")


async def test_a_body_no_handler_reads_is_bounded_too(quick: Config, clients: Clients) -> None:
    """aiohttp reads what is left of a body after the answer for up to 10 s: the
    edge's deadline ends that earlier, and without a traceback."""
    async with edge_app(quick) as (_, port):
        reader, writer = await clients.open(port)
        writer.write(b"POST /ignore HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"not read")
        started = time.monotonic()
        _, closed = await read_until_closed(reader, 3)
        assert closed and time.monotonic() - started <= 0.4 + SLACK_S


async def test_headers_over_the_total_limit_are_refused_at_once(
    quick: Config, caplog: pytest.LogCaptureFixture, clients: Clients
) -> None:
    async with edge_app(quick) as (_edge, port):
        reader, writer = await clients.open(port)
        line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
        started = time.monotonic()
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        writer.write(head + line * (HEAD_MAX_BYTES // len(line) + 2))
        data, closed = await read_until_closed(reader, 3)
        # Long before the deadline: at the limit.
        assert closed and time.monotonic() - started < 0.3
        assert not data or data.startswith(b"HTTP/1.1 431 "), data
        # Just under the limit is a request like any other.
        reader, writer = await clients.open(port)
        filler = line * (HEAD_MAX_BYTES // len(line) - 1)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + filler + b"\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()
        assert "Traceback" not in caplog.text


async def test_closed_connections_leave_no_handler_or_parser_behind(
    quick: Config, clients: Clients
) -> None:
    """What a connection's unfinished headers hold goes with it."""
    line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
    async with edge_app(quick) as (edge, port):
        gc.collect()
        before = sum(isinstance(o, EdgeHandler) for o in gc.get_objects())
        streams = []
        for _ in range(20):
            reader, writer = await clients.open(port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line * 7)
            streams.append((reader, writer))
        async with asyncio.timeout(2):
            while len(handlers(edge)) < 20 or any(h._head_bytes == 0 for h in handlers(edge)):
                await asyncio.sleep(0.01)
        for _, writer in streams[:10]:
            writer.close()  # the client leaves
        for reader, _ in streams[10:]:
            assert (await read_until_closed(reader, 3))[1]  # the deadline closes the rest
        async with asyncio.timeout(2):
            while handlers(edge):
                await asyncio.sleep(0.01)
        gc.collect()
        assert sum(isinstance(o, EdgeHandler) for o in gc.get_objects()) == before
        assert not edge.deadlines._due


async def test_an_open_websocket_is_not_timed(quick: Config) -> None:
    async with edge_app(quick) as (edge, port), aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            await ws.send_str("one")
            assert await ws.receive_str() == "one"
            # What comes now are frames, not the next request's headers.
            assert [h.upgraded for h in handlers(edge)] == [True]
            await asyncio.sleep(1.2)  # three times request_timeout_s
            await ws.send_str("two")
            assert await ws.receive_str() == "two"
            assert not ws.closed and not edge.deadlines._due


async def test_accepted_sockets_have_a_fixed_send_buffer(quick: Config, clients: Clients) -> None:
    async with edge_app(quick) as (edge, port):
        await clients.open(port)
        async with asyncio.timeout(2):
            while not handlers(edge):
                await asyncio.sleep(0.01)
        transport = handlers(edge)[0].transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        # Linux reports twice what was asked (its bookkeeping).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * SEND_BUFFER_BYTES


async def test_an_answer_its_client_does_not_take_is_reset_after_idle_timeout(
    make_config: Callable[..., Config],
) -> None:
    """What the kernel did not take waits in the process: idle_timeout_s (0.6 s)
    without progress, and the connection is reset, which frees it all."""
    config = make_config(request_timeout_s=5.0, keepalive_timeout_s=30.0, idle_timeout_s=0.6)
    async with edge_app(config) as (edge, port):
        started = time.monotonic()
        sock = stalled_client(port, request("/big"))
        try:
            async with asyncio.timeout(2):
                while not handlers(edge) or not handlers(edge)[0].writing_paused:
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(0.6 + SLACK_S):
                while handlers(edge):
                    await asyncio.sleep(0.01)
            assert time.monotonic() - started >= 0.55
            data, closed = await asyncio.to_thread(drain, sock, 3)
        finally:
            sock.close()
        assert closed and data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(data) < BIG_BYTES
        assert not edge.deadlines._due


async def test_an_answer_its_client_takes_slowly_is_not_cut_off(
    make_config: Callable[..., Config],
) -> None:
    """Progress, not the time the whole answer takes: 512 KiB read at 160 KiB/s
    (3 s) with idle_timeout_s at 1 s."""
    config = make_config(request_timeout_s=5.0, keepalive_timeout_s=30.0, idle_timeout_s=1.0)
    async with edge_app(config) as (_, port):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        try:
            writer.write(request("/big"))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            received = 0
            async with asyncio.timeout(20):
                while received < BIG_BYTES:
                    chunk = await reader.read(16 * 1024)
                    assert chunk, f"cut off after {received} bytes"
                    received += len(chunk)
                    await asyncio.sleep(0.1)
        finally:
            writer.close()


async def test_an_address_has_at_most_address_connections_open_in_a_worker(
    make_config: Callable[..., Config], clients: Clients
) -> None:
    config = make_config(address_connections=3, address_streams=3)
    async with edge_app(config) as (edge, port):
        served = []
        for _ in range(3):
            reader, writer = await clients.open(port)
            writer.write(request("/"))
            assert (await read_response(reader))[0] == 200
            served.append(writer)
        # The fourth is answered at once, whether it sent its request or not.
        for send in (False, True):
            reader, writer = await clients.open(port)
            if send:
                writer.write(request("/"))
            status, headers, body = await read_response(reader)
            assert (status, headers["retry-after"], headers["connection"]) == (429, "5", "close")
            assert headers["content-type"] == "application/json; charset=utf-8"
            assert json.loads(body) == {
                "error": {
                    "code": "too_many_connections",
                    "message": "at most 3 open connections per client address",
                }
            }
            assert (await read_until_closed(reader, 2)) == (b"", True)
        assert len(handlers(edge)) == 3
        # One leaves: another may come.
        served[0].close()
        async with asyncio.timeout(2):
            while len(handlers(edge)) == 3:
                await asyncio.sleep(0.01)
        reader, writer = await clients.open(port)
        writer.write(request("/"))
        assert (await read_response(reader))[0] == 200


async def test_connections_from_a_trusted_proxy_are_not_counted(
    make_config: Callable[..., Config], clients: Clients
) -> None:
    """Whose they are is only known from their headers: the proxy caps them."""
    config = make_config(address_connections=1, address_streams=1, trusted_proxies=("127.0.0.1",))
    async with edge_app(config) as (_, port):
        for _ in range(3):
            reader, writer = await clients.open(port)
            writer.write(request("/"))
            assert (await read_response(reader))[0] == 200


async def test_closing_a_subscriber_that_does_not_read_cuts_it_off() -> None:
    """A goodbye would wait behind what the client is not reading: reset it instead."""
    hub = make_hub(MemoryBackend())
    sub, sink = await live(hub)
    sink.paused = True
    sub.deliver(message(1))  # not taken: the pump waits for the client
    async with asyncio.timeout(2):
        while not sub._blocked:
            await asyncio.sleep(0.001)
    sub.close(IDLE)
    assert sink.aborted and sink.closed_with is None and sub.close_reason == OVERFLOW
    assert hub.metrics.value("chat_slow_consumers_dropped_total") == 1
    # One that keeps up is told why.
    other, other_sink = await live(hub, "u-2")
    other.close(IDLE)
    assert other_sink.closed_with == IDLE and not other_sink.aborted


# ------------------------------------------------- the real server, 2 workers


@pytest.fixture(scope="module")
def timed_server(redis_server: RedisProcess | None) -> Iterator[ServerProcess]:
    """One server for the deadline tests: short timeouts, two workers."""
    url = os.environ.get("CHAT_TEST_REDIS_URL") or (redis_server.url if redis_server else "")
    env = {
        "CHAT_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "CHAT_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
    }
    with running_server(redis_url=url, workers=2, env=env) as server:
        yield server


@pytest.mark.processes
async def test_headers_sent_a_byte_a_second_are_cut_off_after_request_timeout(
    timed_server: ServerProcess,
    clients: Clients,
) -> None:
    reader, writer = await clients.open(port_of(timed_server.url))
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in request("/healthz"):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)

    sending = asyncio.create_task(trickle())
    try:
        data, closed = await read_until_closed(reader, REQUEST_TIMEOUT_S + 5)
    finally:
        sending.cancel()
    took = time.monotonic() - started
    assert closed and data == b"", data
    assert REQUEST_TIMEOUT_S - 0.1 <= took <= REQUEST_TIMEOUT_S + SLACK_S, took


@pytest.mark.processes
async def test_a_post_whose_body_stops_gets_408_and_is_closed(
    timed_server: ServerProcess,
    clients: Clients,
) -> None:
    reader, writer = await clients.open(port_of(timed_server.url))
    writer.write(
        b"POST /api/rooms/edge/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        b'{"text": "never fini'
    )
    started = time.monotonic()
    data, closed = await read_until_closed(reader, REQUEST_TIMEOUT_S + 5)
    took = time.monotonic() - started
    assert closed, "still open"
    assert REQUEST_TIMEOUT_S - 0.1 <= took <= REQUEST_TIMEOUT_S + SLACK_S, took
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data
    assert b"Connection: close" in head
    assert json.loads(body) == {
        "error": {"code": "request_timeout", "message": "the request body did not arrive in time"}
    }


@pytest.mark.processes
async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    timed_server: ServerProcess,
    clients: Clients,
) -> None:
    reader, writer = await clients.open(port_of(timed_server.url))
    writer.write(request("/healthz"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers.get("connection") != "close"
    idle_since = time.monotonic()
    data, closed = await read_until_closed(reader, KEEPALIVE_TIMEOUT_S + 5)
    took = time.monotonic() - idle_since
    assert closed and data == b""
    # Not request_timeout_s: nothing of a next request came.
    assert KEEPALIVE_TIMEOUT_S - 0.1 <= took <= KEEPALIVE_TIMEOUT_S + SLACK_S, took


@pytest.mark.processes
async def test_a_keepalive_connection_whose_next_request_stalls_is_cut_off(
    timed_server: ServerProcess,
    clients: Clients,
) -> None:
    reader, writer = await clients.open(port_of(timed_server.url))
    writer.write(request("/healthz"))
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(0.5)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127")
    started = time.monotonic()
    data, closed = await read_until_closed(reader, KEEPALIVE_TIMEOUT_S + 5)
    took = time.monotonic() - started
    assert closed and data == b""
    # request_timeout_s from its first bytes, before the keep-alive timer (3.5 s).
    assert REQUEST_TIMEOUT_S - 0.1 <= took < KEEPALIVE_TIMEOUT_S - 0.5, took


@pytest.mark.processes
async def test_sse_and_websocket_streams_outlive_both_timeouts(
    timed_server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession(timed_server.url) as session:
        async with (
            session.get("/api/rooms/edge-streams/events") as sse,
            session.ws_connect("/api/rooms/edge-streams/ws") as ws,
        ):
            assert sse.status == 200
            await asyncio.sleep(KEEPALIVE_TIMEOUT_S + SLACK_S)
            async with session.post(
                "/api/rooms/edge-streams/messages",
                json={"text": "still here"},
                headers={"Connection": "close"},
            ) as resp:
                assert resp.status == 201
            async with asyncio.timeout(5):
                while True:
                    frame = await ws.receive()
                    assert frame.type == aiohttp.WSMsgType.TEXT, frame
                    if json.loads(frame.data)["type"] == "message":
                        break
                async for line in sse.content:
                    if line.startswith(b"data: ") and b"still here" in line:
                        break
                else:
                    pytest.fail("the SSE stream ended")
            assert not ws.closed


@pytest.mark.processes
async def test_headers_piling_up_past_64_kib_are_cut_off_and_cost_little(
    timed_server: ServerProcess,
    clients: Clients,
) -> None:
    """960 KB of unfinished headers (within aiohttp's per-line and count limits)
    from 40 connections: each is closed at the limit, long before the deadline."""
    port = port_of(timed_server.url)
    line = b"X-Filler: " + b"a" * 7990 + b"\r\n"
    headers = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line * 120
    rss_before = worker_rss_kb(timed_server)

    async def one() -> tuple[float, bytes, bool]:
        reader, writer = await clients.open(port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            writer.write(headers)
            await writer.drain()
        data, closed = await read_until_closed(reader, REQUEST_TIMEOUT_S + 5)
        writer.close()
        return time.monotonic() - started, data, closed

    results = await asyncio.gather(*(one() for _ in range(40)))
    grown_kb = worker_rss_kb(timed_server) - rss_before
    for took, data, closed in results:
        assert closed and (not data or data.startswith(b"HTTP/1.1 431 ")), data
        assert took < REQUEST_TIMEOUT_S - 0.5, took
    # Held to the end, the same would take 40 x 1.8 MB.
    assert grown_kb < 16 * 1024, grown_kb


def send_queue(port: int, client_port: int) -> int | None:
    """Bytes the server's side of a connection has queued in the kernel (ss Send-Q);
    None when the kernel no longer has that socket."""
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed to read a socket's send queue"
    out = subprocess.run(
        [ss, "-tnH", "state", "all", f"( sport = :{port} and dport = :{client_port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # State, Recv-Q, Send-Q, local address, peer address.
    return int(out[2]) if out else None


STALLED = {
    # Silent past idle_timeout_s, its socket and its transport's buffer full:
    # the hub's pump waits for it.
    "ws-paused": ("ws", 400, {"CHAT_IDLE_TIMEOUT_S": "2", "CHAT_HEARTBEAT_S": "0.5"}),
    # Silent, with only the kernel holding what it did not read.
    "ws-kernel": ("ws", 60, {"CHAT_IDLE_TIMEOUT_S": "2", "CHAT_HEARTBEAT_S": "0.5"}),
    # More behind than send_buffer_messages.
    "sse-overflow": ("sse", 400, {"CHAT_SEND_BUFFER_MESSAGES": "50"}),
}


@pytest.mark.processes
@pytest.mark.parametrize("case", list(STALLED))
async def test_a_stalled_stream_is_reset_and_leaves_nothing_in_the_kernel(
    start_server: Callable[..., ServerProcess], case: str
) -> None:
    """A client that stops reading: once it is cut off, the server's kernel
    holds nothing more for it within a second, and the client is told."""
    kind, count, env = STALLED[case]
    server = start_server(workers=2, env=env)
    port = port_of(server.url)
    room = f"stall-{kind}"
    if kind == "ws":
        upgrade = (
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        )
        sock = stalled_client(port, request(f"/api/rooms/{room}/ws", *upgrade))
    else:
        sock = stalled_client(port, request(f"/api/rooms/{room}/events"))
    client_port = sock.getsockname()[1]
    # The hub's line, or the heartbeat's for a silent WebSocket.
    cut_off = re.compile(rf"(cutting off a subscriber of|closing connection \d+ in) {room}\b")
    try:
        async with aiohttp.ClientSession(server.url) as session:
            async with asyncio.timeout(5):
                while True:
                    async with session.get(f"/api/rooms/{room}/online") as resp:
                        if (await resp.json())["count"] == 1:
                            break
                    await asyncio.sleep(0.05)
            most = 0
            for n in range(count):
                async with session.post(
                    f"/api/rooms/{room}/messages", json={"text": "z" * 1500}
                ) as resp:
                    assert resp.status == 201
                if n % 10 == 9:
                    most = max(most, send_queue(port, client_port) or 0)
            deadline = time.monotonic() + 10
            while not cut_off.search(server.log()):
                most = max(most, send_queue(port, client_port) or 0)
                assert time.monotonic() < deadline, f"not cut off\n{server.log()}"
                await asyncio.sleep(0.05)
            seen_cut_off = time.monotonic()
            # Its socket was full, and no fuller than SO_SNDBUF allows.
            assert 0 < most <= 2 * SEND_BUFFER_BYTES, most
            while (queued := send_queue(port, client_port)) and time.monotonic() < seen_cut_off + 1:
                await asyncio.sleep(0.05)
            assert not queued, f"{queued} bytes still queued 1 s after the cut-off\n{server.log()}"
        _, closed = await asyncio.to_thread(drain, sock, 5)
        assert closed, "the client was not told"
    finally:
        sock.close()
    assert "Traceback" not in server.log()
