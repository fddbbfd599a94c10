"""The peer the benchmark compares against: python-socketio on aiohttp with its Redis manager.

This is what a Python user would most likely pick instead of the chat server:
``socketio.AsyncServer`` attached to an aiohttp app, with
``socketio.AsyncRedisManager`` so that an ``emit`` in one process reaches the
clients of every process. One invocation is one process; the harness starts
``--workers`` of them on the same port (``SO_REUSEPORT``), the kernel spreads
the connections over them.

Driven like the chat server:

- a client connects with the socket.io protocol (WebSocket transport) and
  names its room in the ``auth`` payload of the namespace CONNECT packet
  (``{"room": "bench"}``); the connect handler puts it in that room;
- ``POST /api/rooms/{room}/messages`` with ``{"text": ...}`` builds a message
  shaped like the chat server's, emits it to the room (through Redis, so all
  processes deliver it) and answers 201 ``{"message": {...}}``;
- every response carries ``X-Peer-Pid`` so that the harness can see which
  process serves a connection.

Run: ``python -m benchmarks.peer_socketio --port 8081 --redis-url redis://127.0.0.1:6379/0``.
When ready it prints ``peer-socketio: serving http://HOST:PORT (pid P)``.
SIGTERM or SIGINT stops it with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvloop
from aiohttp import web

from .peer_api import ROOM_RE, error, message_text

DEFAULT_ROOM = "general"

SIO_KEY = web.AppKey("sio", socketio.AsyncServer)


def create_app(redis_url: str, *, channel: str = "socketio") -> web.Application:
    """The peer's aiohttp app: the socket.io endpoint plus an HTTP publish endpoint."""
    manager = socketio.AsyncRedisManager(redis_url, channel=channel)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        logger=False,
        engineio_logger=False,
        cors_allowed_origins="*",
    )
    app = web.Application()
    app[SIO_KEY] = sio
    sio.attach(app)
    pid = str(os.getpid())
    counter = itertools.count(1)
    instance = uuid.uuid4().hex[:8]

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        room = auth.get("room") if isinstance(auth, dict) else None
        if room is None:
            room = DEFAULT_ROOM
        if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
            return False  # the client gets a CONNECT_ERROR
        await sio.enter_room(sid, room)
        return True

    async def whoami(sid: str, *args: Any) -> str:
        return pid

    sio.on("connect", connect)
    sio.on("whoami", whoami)

    async def post_message(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        if not ROOM_RE.fullmatch(room):
            return error(404, f"no room {room!r}")
        text = message_text(await request.read())
        if isinstance(text, web.Response):
            return text
        message = {
            "id": f"{instance}-{next(counter)}",
            "room": room,
            "user_id": "anonymous",
            "name": "Anonymous",
            "text": text,
            "ts": time.time(),
        }
        # Delivered to this process's clients, then published to the others.
        await sio.emit("message", message, room=room)
        return web.json_response({"message": message}, status=201)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def pid_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Peer-Pid"] = pid

    app.on_response_prepare.append(pid_header)
    app.router.add_post("/api/rooms/{room}/messages", post_message)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(host: str, port: int, redis_url: str, backlog: int) -> None:
    app = create_app(redis_url)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=backlog)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"peer-socketio: serving http://{host}:{port} (pid {os.getpid()})", flush=True)
    try:
        await stop.wait()
    finally:
        sio = app[SIO_KEY]
        if hasattr(sio, "shutdown"):  # python-socketio 5.11+
            await sio.shutdown()
        await runner.cleanup()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer_socketio",
        description="One process of the benchmark's peer: python-socketio on aiohttp with "
        "AsyncRedisManager. Start several on one port; they share it with SO_REUSEPORT.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(serve(args.host, args.port, args.redis_url, args.backlog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
