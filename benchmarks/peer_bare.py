"""The ceiling the benchmark measures against: a bare aiohttp broadcaster.

What the least a Python server on aiohttp and Redis can do to deliver chat
messages costs; not a product. It speaks the chat server's wire format, so
the load generator's clients serve it unchanged:

- ``POST /api/rooms/{room}/messages`` with ``{"text": ...}``: one Lua script
  ``INCR``\\ s the room's counter (the message id, growing per room across
  processes) and ``PUBLISH``\\ es the message on the room's channel; 201
  ``{"message": {"id", "room", "user_id", "name", "text", "ts"}}``. No
  history, no session, no rate limit.
- ``GET /api/rooms/{room}/ws``: WebSocket (compression off); the server
  sends ``{"type":"message","message":{...}}`` text frames.
- ``GET /api/rooms/{room}/events``: Server-Sent Events, each message
  ``event: message``, ``id: <id>``, ``data: <json>``, one chunk of the
  chunked response.
- ``POST /api/rooms/{room}/typing``: 204, nothing else (as the chat server
  answers a typing notice in a room that shows nobody typing); a WebSocket
  client's frames (``{"type": "typing"}`` among them) are read and ignored.

``--workers`` processes are forked from one main process and share its
listening socket; each runs on uvloop with ONE Redis pub/sub connection
(``redis.asyncio``), subscribed to the channel of every room one of its
clients has opened (never unsubscribed: the benchmark's rooms are few and
fixed), and at most 64 connections for commands (a request waits for a
free one, as in the chat server). Each message is encoded once per
process, as a WebSocket frame and as an SSE chunk, and the same bytes are
written with ``transport.write`` to every local connection of the room; a
connection whose unsent data passes 4 MiB is aborted. Responses carry
``X-Bare-Pid`` (the worker's pid).

Run: ``python -m benchmarks.peer_bare --port 8082 --workers 2 --redis-url redis://127.0.0.1:6379/0``.
When ready it prints ``peer-bare: serving http://HOST:PORT with N workers (pid P)``.
SIGTERM or SIGINT stops it with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from .peer_api import ROOM_RE, message_text

MAX_UNSENT = 4 * 2**20  # bytes waiting in a connection's transport before it is cut off
PID_HEADER = "X-Bare-Pid"

# The id and the publish in one round trip, atomically: ids grow in publish order.
PUBLISH_LUA = """
local id = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], '{"id":"' .. id .. '",' .. ARGV[1])
return id
"""


def ws_frame(payload: bytes) -> bytes:
    """A whole unmasked WebSocket text frame, as a server sends it."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


class Room:
    __slots__ = ("sse", "subscribed", "ws")

    def __init__(self) -> None:
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ws: set[asyncio.Transport] = set()
        self.sse: set[asyncio.Transport] = set()


class Hub:
    """This process's rooms, its one pub/sub connection, and the fan-out."""

    def __init__(self, redis_url: str) -> None:
        # At most 64 connections for commands, as the chat server's workers
        # (a request waits for one; redis-py's default pool refuses past 100
        # with MaxConnectionsError, a 500 far cheaper than a publish).
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub()
        self.publish = self.redis.register_script(PUBLISH_LUA)
        self.rooms: dict[bytes, Room] = {}  # by channel
        self.stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe("bare:control")  # listen() needs one subscription
        self.reader = asyncio.create_task(self.read())

    async def room(self, name: str) -> Room:
        """The room, once this process's subscription to it is confirmed."""
        channel = b"bare:room:" + name.encode()
        room = self.rooms.get(channel)
        if room is None:
            room = self.rooms[channel] = Room()
            await self.pubsub.subscribe(channel)
        await asyncio.shield(room.subscribed)
        return room

    async def read(self) -> None:
        while True:
            try:
                async for m in self.pubsub.listen():
                    if m["type"] == "message":
                        self.deliver(m["channel"], m["data"])
                    elif m["type"] == "subscribe":
                        room = self.rooms.get(m["channel"])
                        if room is not None and not room.subscribed.done():
                            room.subscribed.set_result(None)
            except (ConnectionError, OSError, aioredis.RedisError):
                await asyncio.sleep(0.5)  # redis-py reconnects and subscribes again

    def deliver(self, channel: bytes, message: bytes) -> None:
        room = self.rooms.get(channel)
        if room is None:
            return
        if room.ws:
            send(room.ws, ws_frame(b'{"type":"message","message":' + message + b"}"))
        if room.sse:
            message_id = message[7 : message.index(b'"', 7)]  # {"id":"<id>",...
            event = b"event: message\nid: " + message_id + b"\ndata: " + message + b"\n\n"
            send(room.sse, b"%x\r\n%b\r\n" % (len(event), event))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        await self.pubsub.aclose()
        await self.redis.aclose()


def send(transports: set[asyncio.Transport], data: bytes) -> None:
    for transport in transports:
        if transport.is_closing():
            continue
        if transport.get_write_buffer_size() > MAX_UNSENT:
            transport.abort()  # a slow consumer; its handler ends and forgets it
            continue
        transport.write(data)


HUB = web.AppKey("hub", Hub)


def room_name(request: web.Request) -> str:
    name = request.match_info["room"]
    if not ROOM_RE.fullmatch(name):
        raise web.HTTPNotFound()
    return name


async def post_message(request: web.Request) -> web.Response:
    name = room_name(request)
    text = message_text(await request.read())
    if isinstance(text, web.Response):
        return text
    fields = {"room": name, "user_id": "u-bare", "name": "Bare", "text": text, "ts": time.time()}
    rest = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:]
    hub = request.app[HUB]
    message_id = await hub.publish(keys=[f"bare:seq:{name}", f"bare:room:{name}"], args=[rest])
    body_text = f'{{"message":{{"id":"{message_id}",{rest}}}'
    return web.Response(text=body_text, status=201, content_type="application/json")


async def typing(request: web.Request) -> web.Response:
    """What the least server does with a typing notice in a room that shows
    nobody typing (the chat server's rooms over ``presence_list_max``): 204."""
    room_name(request)
    await request.read()
    return web.Response(status=204)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    room = await request.app[HUB].room(room_name(request))
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    room.ws.add(transport)
    try:
        async for _ in ws:
            pass  # pings are answered by aiohttp; anything else is ignored
    finally:
        room.ws.discard(transport)
    return ws


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    room = await hub.room(room_name(request))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport
    assert transport is not None
    room.sse.add(transport)
    try:
        # Until shutdown, or cancelled when the client goes (handler_cancellation).
        await asyncio.shield(hub.stopping)
    finally:
        room.sse.discard(transport)
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def serve(sock: socket.socket, redis_url: str, backlog: int, ready_fd: int) -> None:
    hub = Hub(redis_url)
    await hub.start()
    app = web.Application()
    app[HUB] = hub
    pid = str(os.getpid())

    async def pid_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[PID_HEADER] = pid

    app.on_response_prepare.append(pid_header)
    app.router.add_post("/api/rooms/{room}/messages", post_message)
    app.router.add_post("/api/rooms/{room}/typing", typing)
    app.router.add_get("/api/rooms/{room}/ws", websocket)
    app.router.add_get("/api/rooms/{room}/events", events)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(
        app, handle_signals=False, handler_cancellation=True, access_log=None, shutdown_timeout=2
    )
    await runner.setup()
    await web.SockSite(runner, sock, backlog=backlog).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    await stop.wait()
    hub.stopping.set_result(None)
    await runner.cleanup()
    await hub.close()


def run_worker(sock: socket.socket, args: argparse.Namespace, ready_fd: int) -> int:
    try:
        run: Any = uvloop.run if args.loop == "uvloop" else asyncio.run
        run(serve(sock, args.redis_url, args.backlog, ready_fd))
    except BaseException:  # noqa: BLE001  (a child must exit, never return into the parent's code)
        traceback.print_exc()
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer_bare",
        description="The benchmark's ceiling: a bare aiohttp broadcaster over Redis pub/sub.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--backlog", type=int, default=1024)
    return parser.parse_args(argv)


def wait_ready(ready_r: int, workers: int, timeout: float = 30) -> bool:
    """Until ``workers`` workers said they serve (a byte each on the pipe), or the time is up."""
    ready = b""
    deadline = time.monotonic() + timeout
    while len(ready) < workers and time.monotonic() < deadline:
        if select.select([ready_r], [], [], 0.1)[0]:
            chunk = os.read(ready_r, 16)
            if not chunk:
                break
            ready += chunk
    os.close(ready_r)
    return len(ready) >= workers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(args.backlog)
    port = sock.getsockname()[1]
    ready_r, ready_w = os.pipe()
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os._exit(run_worker(sock, args, ready_w))
        children.append(pid)
    os.close(ready_w)
    sock.close()

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = wait_ready(ready_r, args.workers)
    if not started:
        print("peer-bare: workers did not start", file=sys.stderr)
        stop(signal.SIGTERM, None)
    else:
        print(
            f"peer-bare: serving http://{args.host}:{port} with {args.workers} workers "
            f"(pid {os.getpid()})",
            flush=True,
        )
    failed = not started
    while children:
        pid, status = os.wait()
        if pid in children:
            children.remove(pid)
            if not stopping:
                failed = True  # a worker died by itself: stop the others too
                stop(signal.SIGTERM, None)
            elif os.waitstatus_to_exitcode(status) != 0:
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
