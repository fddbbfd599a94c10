"""Lifecycle under traffic, with real processes: reloads, dead workers, Redis outages,
slow consumers and stops. Nothing answered 201 may be lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness.chat import id_key
from harness.processes import ROOT
from harness.redis_servers import RedisProcess

from .support import (
    ResilientSubscriber,
    Sender,
    ServerProcess,
    assert_group_exits,
    assert_in_order_once,
    drain,
    sse_events,
    stalled_client,
    subscribe_on_worker,
    two_users,
    wait_healthy,
    worker_pids,
    worker_rss_kb,
)

pytestmark = pytest.mark.processes

ROOM = "/api/rooms/general"


@contextlib.asynccontextmanager
async def subscribers(base: str, per_kind: int = 2) -> AsyncIterator[list[ResilientSubscriber]]:
    """SSE and WebSocket subscribers, reconnecting like the page, spread over the
    two workers: subscriber i of each kind starts on worker i % 2."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar) as session:
        async with session.get("/api/session"):
            pass
        subs = []
        try:
            for kind in ("sse", "ws"):
                for i in range(per_kind):
                    sub = ResilientSubscriber(session, ROOM, kind)
                    subs.append(sub)
                    await start_on_worker(sub, str(i % 2))
            yield subs
        finally:
            for sub in subs:
                await sub.stop()


@contextlib.asynccontextmanager
async def under_traffic(
    base: str, per_second: float, per_kind: int = 2
) -> AsyncIterator[tuple[list[ResilientSubscriber], Sender]]:
    """:func:`subscribers`, and a :class:`Sender` posting to their room meanwhile."""
    async with subscribers(base, per_kind) as subs:
        sender = Sender(base, ROOM, per_second=per_second)
        sender.start()
        try:
            yield subs, sender
        finally:
            await sender.stop()


async def start_on_worker(sub: ResilientSubscriber, worker: str) -> None:
    """Start ``sub`` again and again until its connection lands on ``worker``."""
    async with asyncio.timeout(20):
        while True:
            sub.start()
            try:
                await sub.wait_for(lambda s: bool(s.connections))
            except TimeoutError:
                raise AssertionError(f"no stream opened: {sub.reconnect_reasons}") from None
            if sub.connections[-1].worker == worker:
                return
            await sub.stop()
            sub.connections.clear()


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
    async with under_traffic(server.url, 20) as (subs, sender):
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
        assert len(sender.accepted) >= 40
        await expect_everything(subs, sender.accepted)
        # Only messages that were answered 201 were delivered: nothing invented.
        for sub in subs:
            assert set(sub.ids) == set(sender.accepted)
        # A reload moves every stream once its new workers are ready, over the
        # old workers' window (1 s here); one that comes while another is under
        # way waits for it.
        for at, old_pids in reloads:
            for sub in subs:

                def moved(s: ResilientSubscriber, at: float = at, old: Any = old_pids) -> bool:
                    return any(at < c.opened and c.pid not in old for c in s.connections)

                await sub.wait_for(moved, timeout=max(0.1, at + 8 - time.monotonic()))
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()


async def test_a_burst_of_sighups_is_safe(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with under_traffic(server.url, 20, per_kind=1) as (subs, sender):
        await asyncio.sleep(0.5)
        for _ in range(5):
            server.signal(signal.SIGHUP)
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)
        await sender.stop()
        assert sender.errors == [] and set(sender.statuses) == {201}
        await expect_everything(subs, sender.accepted)
    assert server.proc is not None and server.proc.poll() is None
    assert len(await worker_pids(server.url)) == 2
    # Metrics: both workers of the newest generation report, reloads counted.
    async with aiohttp.ClientSession(server.url) as session:
        async with asyncio.timeout(5):
            while True:
                async with session.get("/metrics") as resp:
                    text = await resp.text()
                ups = [line for line in text.splitlines() if line.startswith("chat_worker_up")]
                if len(ups) == 2:
                    break
                await asyncio.sleep(0.1)
    reloads = [line for line in text.splitlines() if line.startswith("chat_reloads_total")]
    # A SIGHUP that comes while a reload is under way joins it.
    assert len(reloads) == 1 and 1 <= float(reloads[0].rsplit(" ", 1)[1]) <= 5


async def test_sighup_with_broken_config_keeps_old_workers_and_logs_one_line(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    config = tmp_path / "chat.toml"
    config.write_text("message_max_chars = 100\n")
    server = start_server(workers=2, args=["--config", str(config)])
    pids = await worker_pids(server.url)
    config.write_text("message_max_chars = 'many'\n")
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload refused" not in server.log() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    refused = [line for line in server.log().splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "message_max_chars" in refused[0], server.log()
    assert await worker_pids(server.url) == pids
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
    # The old workers go once every new one is ready (until then both may answer).
    async with asyncio.timeout(10):
        while not set((await worker_pids(server.url)).values()).isdisjoint(pids.values()):
            await asyncio.sleep(0.1)


async def test_killed_worker_is_replaced_within_2s_and_nothing_is_lost(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    pids = await worker_pids(server.url)
    async with under_traffic(server.url, 20) as (subs, sender):
        await asyncio.sleep(0.5)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        async with asyncio.timeout(5):
            while True:
                now = await worker_pids(server.url)
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
    start_server: Callable[..., ServerProcess],
    persistent_redis: RedisProcess,
) -> None:
    redis = persistent_redis
    server = start_server(redis_url=redis.url, workers=2)
    async with under_traffic(server.url, 20, per_kind=1) as (subs, sender):
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
    # The operator sees the outage, not one line per refused request.
    refused = [line for line in server.log().splitlines() if "answered 503" in line]
    assert 1 <= len(refused) <= 4, refused


async def publish_burst(base: str, room: str, count: int, text: str) -> dict[str, float]:
    """Post ``count`` messages from 8 concurrent senders; message id -> time sent."""
    sent_at: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def one(n: int) -> None:
            started = time.monotonic()
            async with session.post(f"/api/rooms/{room}/messages", json={"text": text}) as resp:
                assert resp.status == 201
                sent_at[(await resp.json())["message"]["id"]] = started

        queue = list(range(count))

        async def worker() -> None:
            while queue:
                await one(queue.pop())

        await asyncio.gather(*(worker() for _ in range(8)))
    return sent_at


async def latency_p50(base: str, room: str, count: int, text: str) -> tuple[float, list[str]]:
    """Median publish-to-receipt latency at a fast SSE subscriber, and what it received."""
    received_at: dict[str, float] = {}
    done = asyncio.Event()
    async with aiohttp.ClientSession(base) as session:

        async def listen() -> None:
            async with session.get(f"/api/rooms/{room}/events") as resp:
                async for event in sse_events(resp):
                    if event.event == "message" and event.id:
                        received_at[event.id] = time.monotonic()
                        if len(received_at) >= count:
                            done.set()
                            return

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        sent_at = await publish_burst(base, room, count, text)
        await asyncio.wait_for(done.wait(), 30)
        await task
    latencies = sorted(received_at[i] - sent_at[i] for i in sent_at)
    ids = sorted(received_at, key=id_key)
    return latencies[len(latencies) // 2], ids


async def test_slow_consumers_are_cut_off_without_slowing_anyone_or_growing_memory(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_SEND_BUFFER_MESSAGES": "200"})
    port = int(server.url.rsplit(":", 1)[1])
    text = "x" * 1500  # 5,000 of these overflow any kernel socket buffer
    count = 5000
    baseline, _ = await latency_p50(server.url, "calm", count, text)
    rss_before = worker_rss_kb(server)
    slow = [
        stalled_client(port, b"GET /api/rooms/busy/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        stalled_client(
            port,
            b"GET /api/rooms/busy/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
        ),
    ]
    try:
        await asyncio.sleep(0.3)
        with_slow, ids = await latency_p50(server.url, "busy", count, text)
        assert len(ids) == count
        rss_after = worker_rss_kb(server)
        # The fast subscriber did not wait for the slow ones.
        assert with_slow <= 2 * baseline + 0.02, (baseline, with_slow)
        # Bounded memory: far less than the 7.5 MB each slow client was sent.
        assert rss_after - rss_before < 15 * 1024, (rss_before, rss_after)
        # Both slow clients were disconnected; the SSE one resumes from its last id.
        data, closed = await asyncio.to_thread(drain, slow[0], 10)
        assert closed
        seen = [line[4:].decode() for line in data.split(b"\n") if line.startswith(b"id: ")]
        assert seen and len(seen) < count
        _, ws_closed = await asyncio.to_thread(drain, slow[1], 10)
        assert ws_closed
    finally:
        for sock in slow:
            sock.close()
    async with aiohttp.ClientSession(server.url) as session:
        rest: list[str] = []
        async with session.get(f"/api/rooms/busy/events?last_event_id={seen[-1]}") as resp:
            async for event in sse_events(resp):
                if event.event == "message":
                    rest.append(event.id or "")
                    if len(rest) == count - len(seen):
                        break
    assert seen + rest == ids
    assert "cutting off a subscriber of busy" in server.log()


async def test_sigterm_under_traffic_exits_0_and_tells_streams_to_reconnect(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with under_traffic(server.url, 30, per_kind=1) as (subs, sender):
        await asyncio.sleep(1)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.wait, 5)
        elapsed = time.monotonic() - started
        await sender.stop()
    assert code == 0 and elapsed < 5, server.log()
    assert any("shutdown" in r for r in subs[0].reconnect_reasons), subs[0].reconnect_reasons
    assert any("1001" in r for r in subs[1].reconnect_reasons), subs[1].reconnect_reasons
    await assert_group_exits(server)
    assert "Traceback" not in server.log()


async def test_users_of_a_killed_worker_leave_presence_within_two_heartbeats(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)  # heartbeat 0.5 s
    pids = await worker_pids(server.url)
    async with two_users(server.url) as (alice, bob, stack):
        watcher = await subscribe_on_worker(stack, alice, "sse", "0")
        await subscribe_on_worker(stack, bob, "ws", "1")
        async with bob.get("/api/session") as resp:
            bob_id = (await resp.json())["user_id"]
        await watcher.wait_for(lambda c: bob_id in str(c.presence[-1:]))
        # The worker dies with Bob's stream open: nobody removes his entry.
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        await watcher.wait_for(lambda c: bob_id not in str(c.presence[-1]), timeout=5)
        # Two heartbeat intervals (0.5 s here), and one more for the tick that notices.
        assert time.monotonic() - killed <= 3 * 0.5 + 0.5


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_reloads_and_replacements_leak_no_file_descriptors(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    assert server.proc is not None
    before = open_fds(server.proc.pid)
    for _ in range(4):
        pids = await worker_pids(server.url)
        server.signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while set((await worker_pids(server.url)).values()) & set(pids.values()):
                await asyncio.sleep(0.05)
    os.kill((await worker_pids(server.url))[0], signal.SIGKILL)
    await asyncio.sleep(0.5)
    await wait_healthy(server.url, 5)
    server.signal(signal.SIGHUP)
    await wait_healthy(server.url, 5)
    # The old workers close their streams over a second or more before they
    # exit: until then the main process watches them.
    async with asyncio.timeout(10):
        while open_fds(server.proc.pid) > before + 1:
            await asyncio.sleep(0.1)


async def test_workers_that_cannot_start_are_retried_until_redis_is_back(
    start_server: Callable[..., ServerProcess],
    persistent_redis: RedisProcess,
) -> None:
    """A reload while Redis is down: the new workers fail to start. The server
    must keep trying (not stop, as aiotools would) and serve again once Redis is back."""
    redis = persistent_redis
    server = start_server(redis_url=redis.url, workers=2)
    redis.stop()
    server.signal(signal.SIGHUP)
    await asyncio.sleep(3)
    assert server.proc is not None and server.proc.poll() is None, server.log()
    redis.start()
    await wait_healthy(server.url, 15)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.post(f"{ROOM}/messages", json={"text": "back"}) as resp:
            assert resp.status == 201


async def test_a_stuck_worker_cannot_hang_a_stop(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_SHUTDOWN_TIMEOUT_S": "1"})
    pids = await worker_pids(server.url)
    os.kill(pids[0], signal.SIGSTOP)  # frozen: it will never answer the stop signal
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 10) == 0
    assert time.monotonic() - started < 1 * 2 + 2 + 2
    await assert_group_exits(server)
    assert "did not stop in time; killing it" in server.log()


async def test_workers_do_not_outlive_a_killed_main_process(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    await worker_pids(server.url)
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(5)
    await assert_group_exits(server, timeout=5)


async def test_sighup_runs_freshly_imported_code(
    tmp_path: Any,
    start_server: Callable[..., ServerProcess],
) -> None:
    """Workers of a new generation import the app again: a reload deploys new code."""
    import shutil

    copy = tmp_path / "app"
    shutil.copytree(os.path.join(ROOT, "server"), copy / "server")
    server = start_server(workers=2, env={"PYTHONPATH": str(copy)})
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/healthz") as resp:
            assert (await resp.json())["status"] == "ok"
        views = copy / "server" / "web" / "views.py"
        views.write_text(views.read_text().replace('"status": "ok"', '"status": "new code"'))
        server.signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            statuses: set[str] = set()
            while statuses != {"new code"}:
                statuses = set()
                for _ in range(6):
                    async with session.get("/healthz", headers={"Connection": "close"}) as resp:
                        statuses.add((await resp.json())["status"])
                await asyncio.sleep(0.1)


async def test_replacing_every_original_worker_keeps_the_replacements_serving(
    start_server: Callable[..., ServerProcess],
) -> None:
    """aiotools ends a generation when all the workers it started are gone; the
    replacements it does not know of must not be stopped for that."""
    server = start_server(workers=2)
    original = await worker_pids(server.url)

    async def replaced(index: int) -> int:
        os.kill(original[index], signal.SIGKILL)
        async with asyncio.timeout(5):
            while True:
                now = await worker_pids(server.url)
                if now.get(index) not in (None, original[index]):
                    return now[index]
                await asyncio.sleep(0.05)

    first = await replaced(0)
    second = await replaced(1)
    await asyncio.sleep(1)
    assert await worker_pids(server.url) == {0: first, 1: second}
    assert "all workers are gone" not in server.log()


async def test_pubsub_connections_dropping_under_traffic_lose_and_repeat_nothing(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    server = start_server(workers=2)
    sender = Sender(server.url, ROOM, per_second=80)
    admin = aioredis.Redis.from_url(redis_url)
    async with subscribers(server.url) as subs:
        sender.start()
        kills = 0
        try:
            for _ in range(8):
                await asyncio.sleep(0.25)
                # Redis drops every worker's pub/sub connection, messages keep coming.
                kills += await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            await sender.stop()
            await admin.aclose()
        assert kills >= 8 and not sender.errors and set(sender.statuses) == {201}
        await expect_everything(subs, sender.accepted)
        # The workers caught up from the streams by themselves: no client had
        # to reconnect and resume.
        assert [len(sub.connections) for sub in subs] == [1] * len(subs)
    assert "pub/sub lost Redis" in server.log()


async def test_a_client_that_replays_everything_and_never_reads_costs_little_and_is_cut_off(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        text = "y" * 1000
        for start in range(0, 10_000, 1000):
            pipe = admin.pipeline(transaction=False)
            for n in range(start, start + 1000):
                pipe.xadd("chat:{big}:messages", {"u": "u-1", "n": "A", "t": text, "ts": str(n)})
            await pipe.execute()
    finally:
        await admin.aclose()
    server = start_server(workers=1, env={"CHAT_IDLE_TIMEOUT_S": "3", "CHAT_HEARTBEAT_S": "1"})
    port = int(server.url.rsplit(":", 1)[1])
    # Warm the worker up on the same path, so that what follows measures one client.
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/api/rooms/big/events?last_event_id=0-0") as resp:
            async for event in sse_events(resp):
                if event.event == "message":
                    break
    await asyncio.sleep(0.5)
    rss_before = worker_rss_kb(server)
    sock = stalled_client(
        port, b"GET /api/rooms/big/events?last_event_id=0-0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    try:
        await asyncio.sleep(1.5)
        grown_kb = worker_rss_kb(server) - rss_before
        # Cut off within idle_timeout_s (3 s) of its socket filling up: by
        # now the connection was reset, which drops what the kernel held.
        await asyncio.sleep(3.5)
        sock.settimeout(2)
        with pytest.raises((ConnectionResetError, TimeoutError)) as raised:
            while sock.recv(1 << 16):
                pass
    finally:
        sock.close()
    assert raised.type is ConnectionResetError, "still open after idle_timeout_s"
    assert grown_kb < 2048, grown_kb
    assert "stopped reading" in server.log()
