"""Lifecycle under traffic, with real processes: reloads, dead workers, Redis outages,
slow consumers and stops. Nothing answered 201 may be lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from .support import (
    RedisProcess,
    ResilientSubscriber,
    Sender,
    ServerProcess,
    assert_in_order_once,
)

pytestmark = pytest.mark.processes

ROOM = "/api/rooms/general"


@pytest.fixture
def start_server(redis_url: str) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(**kwargs: Any) -> ServerProcess:
        kwargs.setdefault("redis_url", redis_url)
        server = ServerProcess(**kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


@contextlib.asynccontextmanager
async def subscribers(base: str, per_kind: int = 2) -> AsyncIterator[list[ResilientSubscriber]]:
    """SSE and WebSocket subscribers, reconnecting like the page, on every worker."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar) as session:
        async with session.get("/api/session"):
            pass
        subs = [
            ResilientSubscriber(session, ROOM, kind)
            for kind in ("sse", "ws")
            for _ in range(per_kind)
        ]
        for sub in subs:
            sub.start()
        try:
            for sub in subs:
                await sub.wait_for(lambda s: bool(s.connections))
            yield subs
        finally:
            for sub in subs:
                await sub.stop()


async def healthz(base: str) -> dict[int, int]:
    """Worker index -> pid, by asking on fresh connections until every index answered."""
    seen: dict[int, int] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        for _ in range(200):
            async with session.get("/healthz") as resp:
                body = await resp.json()
                seen[body["worker"]] = body["pid"]
            if len(seen) == 2:
                break
    return seen


async def expect_everything(subs: list[ResilientSubscriber], accepted: list[str]) -> None:
    """Every subscriber has every accepted message exactly once, in id order."""
    wanted = set(accepted)
    for sub in subs:
        await sub.wait_for(lambda s: wanted <= set(s.ids), timeout=15)
        assert_in_order_once(sub.ids)


async def test_three_sighups_under_traffic_lose_nothing_and_refuse_nobody(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with subscribers(server.url) as subs:
        sender = Sender(server.url, ROOM, per_second=20)
        sender.start()
        reloads = []
        for _ in range(3):
            await asyncio.sleep(1)
            before = {c.pid for sub in subs for c in sub.connections}
            reloads.append((time.monotonic(), before))
            server.signal(signal.SIGHUP)
        await asyncio.sleep(1.5)
        await sender.stop()
        assert sender.errors == [], sender.errors
        assert set(sender.statuses) == {201}, sender.bodies
        assert len(sender.accepted) >= 60
        await expect_everything(subs, sender.accepted)
        # Only messages that were answered 201 were delivered: nothing invented.
        for sub in subs:
            assert set(sub.ids) == set(sender.accepted)
        for at, old_pids in reloads:
            for sub in subs:
                moved = [
                    c for c in sub.connections if at < c.opened <= at + 3 and c.pid not in old_pids
                ]
                assert moved, f"{sub.kind} subscriber not on a new worker within 3 s"
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()


async def test_sighup_with_broken_config_keeps_old_workers_and_logs_one_line(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    config = tmp_path / "chat.toml"
    config.write_text("message_max_chars = 100\n")
    server = start_server(workers=2, args=["--config", str(config)])
    pids = await healthz(server.url)
    config.write_text("message_max_chars = 'many'\n")
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload refused" not in server.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    refused = [line for line in server.log().splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "message_max_chars" in refused[0], server.log()
    assert await healthz(server.url) == pids
    # Fresh connections: a keep-alive connection closed by a stopping worker
    # would fail a request that a browser retries on its own.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(server.url, connector=connector) as session:
        async with session.post(f"{ROOM}/messages", json={"text": "x" * 50}) as resp:
            assert resp.status == 201
        # A good config applies on the next SIGHUP.
        config.write_text("message_max_chars = 10\n")
        server.signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while True:
                async with session.post(f"{ROOM}/messages", json={"text": "x" * 50}) as resp:
                    if resp.status == 413:
                        break
                    assert resp.status == 201
                await asyncio.sleep(0.1)
    assert set((await healthz(server.url)).values()).isdisjoint(pids.values())


async def test_killed_worker_is_replaced_within_2s_and_nothing_is_lost(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    pids = await healthz(server.url)
    async with subscribers(server.url) as subs:
        sender = Sender(server.url, ROOM, per_second=20)
        sender.start()
        await asyncio.sleep(0.5)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        async with asyncio.timeout(5):
            while True:
                now = await healthz(server.url)
                if now.get(0) not in (None, pids[0]):
                    break
                await asyncio.sleep(0.05)
        assert time.monotonic() - killed_at < 2.0
        assert now[1] == pids[1], "the other worker kept serving"
        await asyncio.sleep(1)
        await sender.stop()
        assert set(sender.statuses) == {201}, sender.bodies
        await expect_everything(subs, sender.accepted)
    assert "died; starting a replacement" in server.log()


async def test_redis_outage_answers_503_then_recovers_with_nothing_lost(
    tmp_path: Any,
) -> None:
    redis = RedisProcess(persistent=True)
    redis.start()
    server = ServerProcess(redis_url=redis.url, workers=2)
    try:
        server.start()
        async with subscribers(server.url, per_kind=1) as subs:
            sender = Sender(server.url, ROOM, per_second=20)
            sender.start()
            await asyncio.sleep(1)
            redis.stop()
            outage_started = len(sender.statuses)
            await asyncio.sleep(5)
            during = sender.statuses[outage_started:]
            redis.start()
            recovered_at = time.monotonic()
            async with asyncio.timeout(10):
                while sender.statuses[-1:] != [201]:
                    await asyncio.sleep(0.05)
            assert time.monotonic() - recovered_at < 5
            await asyncio.sleep(1)
            await sender.stop()
            assert during and 201 not in during[1:], during
            assert 503 in during
            assert set(sender.statuses) <= {201, 503}
            for body in sender.bodies:
                assert body["error"]["code"] == "unavailable"
            assert sender.errors == []
            await expect_everything(subs, sender.accepted)
        assert "Traceback" not in server.log()
    finally:
        server.kill()
        redis.cleanup()
