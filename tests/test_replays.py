"""Replays are bounded per worker, not only per connection (real server, real Redis).

Many clients that resume from the start of a long history of long messages
and never read cost the worker a bounded amount of memory, not a page of
history each; a client that resumes meanwhile still gets every message once,
in order, when its turn comes.
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.web.transports.sink import HIGH_WATER

from .support import (
    ServerProcess,
    assert_in_order_once,
    metric,
    sse_collector,
    stalled_client,
    store_history,
    worker_rss_kb,
)

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

ROOM = "big"
MESSAGES = 3000
TEXT = "y" * 2000  # message_max_chars
STALLED = 100  # address_streams: what one client address may hold open
SLOTS = 4  # replays_per_worker
# What a client that stops reading may make a worker hold: its socket's
# write buffer (and one frame over it), and the connection itself.
PER_STREAM_KIB = HIGH_WATER // 1024 + 64
# The replay slots' pages, and room for the allocator's own ways.
SLACK_KIB = 16 * 1024


async def fill_history(redis_url: str) -> list[str]:
    """Store MESSAGES messages in ROOM as the server would (each keeps its predecessor)."""
    admin = aioredis.Redis.from_url(redis_url)
    try:
        return await store_history(admin, ROOM, [TEXT] * MESSAGES)
    finally:
        await admin.aclose()


def resume_request(n: int) -> bytes:
    """A resume from the very start, each of the three ways there is (SSE by header or
    by query, WebSocket by ?since=)."""
    headers = "Host: 127.0.0.1\r\n"
    if n % 3 == 0:
        path = f"/api/rooms/{ROOM}/events"
        headers += "Last-Event-ID: 0-0\r\n"
    elif n % 3 == 1:
        path = f"/api/rooms/{ROOM}/events?last_event_id=0-0"
    else:
        path = f"/api/rooms/{ROOM}/ws?since=0-0"
        headers += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
    return f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()


def unread_bytes(sock: object) -> int:
    """What the server sent to a client socket that it has not read."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")  # type: ignore[attr-defined]
    return int(struct.unpack("i", raw)[0])


async def replay_everything(session: aiohttp.ClientSession, ids: list[str]) -> None:
    """A client that resumes from 0-0 and reads: every message once, in order, no gap."""
    async with sse_collector(
        session, f"/api/rooms/{ROOM}/events", params={"last_event_id": "0-0"}
    ) as reader:
        await reader.wait_for(lambda c: len(c.ids) >= len(ids), timeout=40)
        assert_in_order_once(reader.ids)
        assert reader.ids == ids
        assert reader.gaps == []


async def test_clients_that_resume_from_the_start_and_never_read_hold_little_of_a_worker(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    ids = await fill_history(redis_url)
    server = start_server(
        workers=1,
        env={"CHAT_REPLAYS_PER_WORKER": str(SLOTS), "CHAT_IDLE_TIMEOUT_S": "60"},
    )
    port = int(server.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession(server.url) as session:
        # Warm the worker up on the same path: what follows measures the attack.
        await replay_everything(session, ids)
        await asyncio.sleep(0.5)
        rss_before = worker_rss_kb(server)
        socks = [stalled_client(port, resume_request(n)) for n in range(STALLED)]
        try:
            peak = rss_before

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, worker_rss_kb(server))
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            try:
                # Every stream is open and was sent part of its replay, and it
                # waits there, stalled, while another client resumes and reads.
                async with asyncio.timeout(20):
                    while any(unread_bytes(sock) < len(TEXT) for sock in socks):
                        await asyncio.sleep(0.1)
                await replay_everything(session, ids)
                async with session.get("/metrics") as resp:
                    text = await resp.text()
                opened = sum(
                    metric(text, f'chat_connections{{transport="{kind}"}}')
                    for kind in ("sse", "ws")
                )
                assert opened >= STALLED
                await asyncio.sleep(1)
            finally:
                sampler.cancel()
        finally:
            for sock in socks:
                sock.close()
        await asyncio.sleep(1)
        rss_after = worker_rss_kb(server)
    bound_kib = STALLED * PER_STREAM_KIB + SLACK_KIB
    grown, kept = peak - rss_before, rss_after - rss_before
    print(f"worker RSS grew {grown} KiB at most, {kept} KiB after; bound {bound_kib} KiB")
    assert grown < bound_kib, (grown, bound_kib)
    assert kept < bound_kib, (kept, bound_kib)
