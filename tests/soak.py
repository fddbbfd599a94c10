"""The short soak's moving parts: steady subscribers, publishers, churning
clients, faults, and the settled readings that :mod:`tests.soak_check` judges.

A fixed population takes part, so that everything a settled server keeps for
it is bounded: a session per steady subscriber, per publisher and per
churning loop, made once. Each round runs them all for ``round_s`` seconds,
with ``fault`` (a reload, a killed worker) half-way through; then churn and
publishing pause and the server is read once its numbers stop moving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from server.store.session_store import COOKIE_NAME

from .soak_check import Settled, count_kinds
from .support import ResilientSubscriber, assert_in_order_once

HEAD_TIMEOUT_S = 5.0


@dataclass
class Population:
    base: str
    rooms: list[str]
    churners: int = 8
    per_second: float = 5.0  # messages per room
    seed: int = 1
    steady: list[ResilientSubscriber] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # one per churning loop
    accepted: dict[str, list[str]] = field(default_factory=dict)  # room -> ids answered 201
    outcomes: Counter[str] = field(default_factory=Counter)  # churn and publishing
    publishers: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def new_session(self, **kwargs: Any) -> tuple[aiohttp.ClientSession, str]:
        """A client with a chat session of its own, and the session's cookie."""
        jar = aiohttp.CookieJar(unsafe=True)
        session = aiohttp.ClientSession(self.base, cookie_jar=jar, **kwargs)
        self._sessions.append(session)
        async with session.get("/api/session") as resp:
            assert resp.status == 200, await resp.text()
            return session, resp.cookies[COOKIE_NAME].value

    async def start(self) -> None:
        for room in self.rooms:
            self.accepted[room] = []
            for kind in ("sse", "ws"):
                session, _ = await self.new_session()
                sub = ResilientSubscriber(session, f"/api/rooms/{room}", kind)
                self.steady.append(sub)
                sub.start()
        for room in self.rooms:
            fresh = aiohttp.TCPConnector(force_close=True)  # a connection per message
            self.publishers[room], _ = await self.new_session(connector=fresh)
        for _ in range(self.churners):
            self.cookies.append((await self.new_session())[1])
        for sub in self.steady:
            await sub.wait_for(lambda s: s.connections, timeout=10)

    async def close(self) -> None:
        for sub in self.steady:
            await sub.stop()
        for session in self._sessions:
            await session.close()

    # -- a round ----------------------------------------------------------------

    async def round(self, round_s: float, fault: Callable[[], Awaitable[None]] | None) -> None:
        """Churn and publish for ``round_s`` seconds, ``fault`` half-way."""
        stop = asyncio.Event()
        rng = random.Random(self.seed)  # (the same for every round: identical churn)
        workers = [
            *(self._publish(room, stop) for room in self.rooms),
            *(self._churn(cookie, random.Random(rng.random()), stop) for cookie in self.cookies),
        ]
        tasks = [asyncio.create_task(w) for w in workers]
        try:
            await asyncio.sleep(round_s / 2)
            if fault is not None:
                await fault()
            await asyncio.sleep(round_s / 2)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await asyncio.gather(*tasks)

    async def _publish(self, room: str, stop: asyncio.Event) -> None:
        session, interval, i = self.publishers[room], 1 / self.per_second, 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(
                    f"/api/rooms/{room}/messages",
                    json={"text": f"soak {i}"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    self.outcomes[f"post {resp.status}"] += 1
                    if resp.status == 201:
                        self.accepted[room].append((await resp.json())["message"]["id"])
            except (TimeoutError, aiohttp.ClientError):
                self.outcomes["post error"] += 1
            i += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _churn(self, cookie: str, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            room = rng.choice(self.rooms)
            kind = rng.choice(("sse", "ws"))
            leave = rng.choice(("clean", "drop"))
            reads = rng.random() < 0.75
            hold = rng.uniform(0.05, 1.0)
            try:
                outcome = await churn_once(self.base, room, cookie, kind, leave, reads, hold)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                # (A worker killed or reloaded while the request waited for its answer.)
                outcome = type(exc).__name__
            self.outcomes[f"{kind} {outcome}"] += 1

    # -- after a round ----------------------------------------------------------

    async def delivered_everything(self, timeout: float = 20) -> None:
        """Every steady subscriber has every message its room accepted, once, in order."""
        for sub in self.steady:
            room = sub.room_path.rsplit("/", 1)[1]
            accepted = self.accepted[room]
            if accepted:
                last = accepted[-1]

                def has_last(s: ResilientSubscriber, last: str = last) -> bool:
                    return last in s.ids

                await sub.wait_for(has_last, timeout=timeout)
            assert_in_order_once(sub.ids)
            missing = set(accepted) - set(sub.ids)
            assert not missing, (room, sub.kind, len(missing), sub.reconnect_reasons)


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
    base: str, redis: aioredis.Redis, steady: int, workers: int, timeout: float = 30
) -> tuple[Settled, bool]:
    """Read the server until two readings a heartbeat tick apart agree, every
    worker reports, and only the ``steady`` streams are open; after
    ``timeout``, the last reading and False.

    The readings share one keep-alive connection: reading adds no connection
    of its own to what it reads."""
    deadline = time.monotonic() + timeout
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
