"""Clients that ask for a large answer and never read it: what they may hold in a
worker, and for how long.

The attack, at a smaller scale: 100 connections from one address, no cookie,
each asking for a room's last 200 messages of 8,000 characters (a 1.6 MB
answer) and reading nothing, against one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.store.broker import Broker

from .support import ServerProcess, drain, server_sockets, stalled_client, worker_rss_kb

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

ROOM = "big"
MESSAGES = 200
CHARS = 8000
CLIENTS = 100
PAGE = f"/api/rooms/{ROOM}/messages?limit={MESSAGES}"
REQUEST = f"GET {PAGE} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
# What the worker may grow by while 100 such clients wait: a fifth of one
# whole answer each. Built whole, each answer held 3.4 MB (340 MB in all).
GROWTH_MAX_KB = 64 * 1024
IDLE_TIMEOUT_S = 3.0
# The edge acts on a deadline within a sweep (a second at most); the rest is
# for a loaded machine.
SLACK_S = 3.0


async def fill_room(redis_url: str) -> None:
    """200 messages of 8,000 characters, stored as the server stores them."""
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        broker = Broker(redis, history_len=10_000)
        for n in range(MESSAGES):
            await broker.publish(ROOM, "u-1", "Ann", f"{n:05d}" + "z" * (CHARS - 5))
    finally:
        await redis.aclose()


@contextlib.contextmanager
def stalled_clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(stalled_client(port, REQUEST))
        yield socks
    finally:
        for sock in socks:
            sock.close()


async def answered(socks: list[socket.socket], timeout: float) -> None:
    """Until the server has begun to answer every one of them."""

    def first_byte(sock: socket.socket) -> None:
        sock.settimeout(timeout)
        assert sock.recv(1, socket.MSG_PEEK) == b"H"

    await asyncio.gather(*(asyncio.to_thread(first_byte, sock) for sock in socks))


@pytest.fixture
async def attacked(start_server: Callable[..., ServerProcess], redis_url: str) -> ServerProcess:
    """One worker, messages up to 8,000 characters, a room full of them, and one
    answer read in full already (what a first request sets up is not growth)."""
    await fill_room(redis_url)
    env = {
        "CHAT_MESSAGE_MAX_CHARS": str(CHARS),
        "CHAT_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        "CHAT_HEARTBEAT_S": "0.5",
    }
    server = start_server(workers=1, env=env)
    async with aiohttp.ClientSession(server.url) as http, http.get(PAGE) as resp:
        assert resp.status == 200
        body = await resp.read()
    messages = json.loads(body)["messages"]
    assert [m["text"][:5] for m in messages] == [f"{n:05d}" for n in range(MESSAGES)]
    return server


async def test_clients_that_never_read_a_large_page_hold_little_and_are_reset(
    attacked: ServerProcess,
) -> None:
    """While they wait, the worker grows by a fraction of what the answers
    take; after ``idle_timeout_s`` without progress each is reset, which
    leaves nothing queued in the kernel either."""
    port = int(attacked.url.rsplit(":", 1)[1])
    before = worker_rss_kb(attacked)
    opened = time.monotonic()
    with stalled_clients(port, CLIENTS) as socks:
        await answered(socks, timeout=30)
        answered_at = time.monotonic()
        during = worker_rss_kb(attacked) - before
        mine = {sock.getsockname()[1] for sock in socks}
        if answered_at - opened < IDLE_TIMEOUT_S - 0.5:
            # None is cut off before it made no progress for idle_timeout_s.
            assert mine <= set(server_sockets(port))
        deadline = answered_at + IDLE_TIMEOUT_S + SLACK_S
        while left := mine & set(server_sockets(port)):
            assert time.monotonic() < deadline, f"{len(left)} of {CLIENTS} not reset"
            await asyncio.sleep(0.1)
        after = worker_rss_kb(attacked) - before
        # Each was reset (not closed): what it got, it can read, then the reset.
        for sock in socks:
            data, closed = await asyncio.to_thread(drain, sock, 5)
            assert closed and data.startswith(b"HTTP/1.1 200 OK\r\n")
            assert not data.endswith(b"]}\r\n0\r\n\r\n")
    assert during < GROWTH_MAX_KB, f"grew by {during} KiB while {CLIENTS} clients waited"
    assert after < GROWTH_MAX_KB, f"grew by {after} KiB once they were reset"
    assert "Traceback" not in attacked.log()
