"""The soaks' shared moving parts: a churning client on a raw socket, and the
settled readings of a server that :mod:`benchmarks.soak_check` judges.

Used by the short soak (``tests/soak.py``) and the benchmark's long one
(``benchmarks/scenarios/soak.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from typing import cast

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from server.store.session_store import COOKIE_NAME

from .soak_check import Settled, count_kinds

HEAD_TIMEOUT_S = 5.0


async def churn_once(
    base: str, room: str, cookie: str, kind: str, leave: str, reads: bool, hold: float
) -> str:
    """One short-lived stream on a raw socket: open it, hold it ``hold`` seconds
    (reading what comes, or never reading), then leave cleanly (a WebSocket
    close, or a plain FIN for SSE, as a browser's ``EventSource.close()``)
    or drop it (a reset, no close). Returns the status, or why it failed."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        path = f"/api/rooms/{room}/" + ("events" if kind == "sse" else "ws")
        head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", f"Cookie: {COOKIE_NAME}={cookie}"]
        if kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            head += [
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
            ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            response = await reader.readuntil(b"\r\n\r\n")
        status = response.split(b" ", 2)[1].decode()
        if status not in ("200", "101"):
            return status
        if reads:
            reading: asyncio.Task[None] | None = asyncio.create_task(_discard(reader))
        else:
            reading = None
            # What comes stays in the kernel's buffers.
            cast(asyncio.Transport, writer.transport).pause_reading()
        await asyncio.sleep(hold)
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        else:
            cast(asyncio.Transport, writer.transport).resume_reading()
        if leave == "drop":
            return status
        if kind == "ws":
            writer.write(_masked_close())
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    await _discard(reader)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return status
    finally:
        if not writer.is_closing():
            # Dropped: a reset, nothing more (SO_LINGER 0 and an abortive close).
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def _masked_close(code: int = 1000) -> bytes:
    mask = os.urandom(4)
    payload = struct.pack("!H", code)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked


# -- readings ---------------------------------------------------------------------


async def read_server(http: aiohttp.ClientSession, redis: aioredis.Redis) -> Settled:
    """The workers' gauges (one scrape sums every process of the instance) and
    the Redis keys by kind."""
    async with http.get("/metrics") as resp:
        assert resp.status == 200, await resp.text()
        gauges = worker_gauges(await resp.text())
    found = [k.decode() async for k in redis.scan_iter(count=1000)]
    return Settled(
        gauges["chat_worker_tasks"],
        gauges["chat_worker_open_fds"],
        gauges["chat_worker_rss_bytes"],
        sum(gauges["chat_connections"].values()),
        count_kinds(found),
    )


WORKER_GAUGES = ("chat_worker_tasks", "chat_worker_open_fds", "chat_worker_rss_bytes")


def worker_gauges(text: str) -> dict[str, dict[str, float]]:
    """The resources each worker reports, by pid (see WORKER_GAUGES), and the
    open streams by transport (``chat_connections``), from a scrape's text."""
    found: dict[str, dict[str, float]] = {name: {} for name in (*WORKER_GAUGES, "chat_connections")}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WORKER_GAUGES:
                found[sample.name][sample.labels["pid"]] = sample.value
            elif sample.name == "chat_connections":
                found[sample.name][sample.labels["transport"]] = sample.value
    return found


async def settle(
    base: str, redis: aioredis.Redis, steady: int, workers: int, within_s: float = 30
) -> tuple[Settled, bool]:
    """Read the server until two readings a heartbeat tick apart agree, every
    worker reports, and only the ``steady`` streams are open; after
    ``within_s``, the last reading and False.

    The readings share one keep-alive connection: reading adds no connection
    of its own to what it reads."""
    deadline = time.monotonic() + within_s
    last: Settled | None = None
    async with aiohttp.ClientSession(base) as http:
        while True:
            now = await read_server(http, redis)
            if (
                last is not None
                and now.connections == steady
                and len(now.tasks) == len(now.fds) == workers
                and now.totals() == last.totals()
                and now.keys == last.keys
                and set(now.tasks) == set(last.tasks)
            ):
                return now, True
            if time.monotonic() > deadline:
                return now, False
            last = now
            await asyncio.sleep(0.6)  # (the soak's heartbeat ticks every 0.5 s)
