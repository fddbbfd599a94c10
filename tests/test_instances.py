"""Several chat-server instances on one Redis act as one chat, with no shared
setting, and say what happens to them in their logs: real processes, each
with its own data directory, on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness.redis_servers import RedisProcess
from server.common.redisurl import shown as shown_url
from server.process.cli import SECRET_KEY

from .support import ServerProcess, assert_in_order_once, sse_collector, worker_pids

pytestmark = [pytest.mark.processes, pytest.mark.timeout(60)]


async def user_of(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/api/session") as resp:
        assert resp.status == 200
        return str((await resp.json())["user_id"])


async def post(http: aiohttp.ClientSession, base: str, room: str, text: str) -> str:
    async with http.post(f"{base}/api/rooms/{room}/messages", json={"text": text}) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["message"]["id"])


async def test_two_instances_without_a_secret_are_one_chat(
    start_server: Callable[..., ServerProcess], any_redis_url: str
) -> None:
    # Each ServerProcess runs in a directory of its own: two data directories.
    one = start_server(workers=2, redis_url=any_redis_url)
    two = start_server(workers=1, redis_url=any_redis_url)
    assert one.cwd != two.cwd
    # One cookie jar, as one browser: the cookie is for the host, whatever the
    # port (unsafe=True: aiohttp keeps no cookies from IP-address hosts otherwise).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        user = await user_of(http, one.url)
        assert await user_of(http, two.url) == user  # the same user on the other

        # A message posted on one reaches a subscriber on the other.
        room = "together"
        async with sse_collector(http, f"{two.url}/api/rooms/{room}/events") as on_two:
            first = await post(http, one.url, room, "from one")
            await on_two.wait_for(lambda c: c.ids == [first])
            assert on_two.messages[0]["user_id"] == user
        # The subscriber moves to the other instance and resumes: no gap, no double.
        later = [await post(http, two.url, room, f"while away {n}") for n in range(3)]
        async with sse_collector(
            http, f"{one.url}/api/rooms/{room}/events", headers={"Last-Event-ID": first}
        ) as on_one:
            await on_one.wait_for(lambda c: len(c.ids) >= 3)
            last = await post(http, one.url, room, "back")
            await on_one.wait_for(lambda c: last in c.ids)
            assert on_one.ids == [*later, last] and on_one.gaps == []
            assert_in_order_once(on_one.ids)


async def test_a_configured_secret_wins_and_a_kept_one_is_offered_first(
    start_server: Callable[..., ServerProcess], redis_url: str, tmp_path: Path
) -> None:
    # An instance that kept a secret of its own (from before it shared a
    # Redis) offers it: its users stay signed in.
    (tmp_path / "chat-data").mkdir()
    (tmp_path / "chat-data" / "session_secret").write_text("kept-before-sharing\n")
    first = start_server(workers=1, cwd=str(tmp_path))
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await client.get(SECRET_KEY) == "kept-before-sharing"
        later = start_server(workers=1)  # reads it, and keeps nothing of its own
        assert not os.path.exists(os.path.join(later.cwd or "", "chat-data", "session_secret"))
        own = start_server(workers=1, env={"CHAT_SESSION_SECRET": "configured"})
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            user = await user_of(http, first.url)
            assert await user_of(http, later.url) == user
            # A configured secret wins: that instance does not know the cookie.
            assert await user_of(http, own.url) != user
        assert await client.get(SECRET_KEY) == "kept-before-sharing"
    finally:
        await client.aclose()


async def test_json_logs_have_one_line_per_lifecycle_event_and_no_secret(
    start_server: Callable[..., ServerProcess],
    persistent_redis: RedisProcess,
) -> None:
    redis = persistent_redis
    server = start_server(redis_url=redis.url, workers=2, args=["--log-format", "json"])
    first = await worker_pids(server.url)
    assert server.proc is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await user_of(http, server.url)
        cookie = next(iter(http.cookie_jar)).value
    # A killed worker, a reload, and Redis going away and coming back.
    os.kill(first[1], signal.SIGKILL)
    second = await changed_pids(server.url, first, {1})
    os.kill(server.proc.pid, signal.SIGHUP)
    third = await changed_pids(server.url, second, {0, 1})
    # (The old workers close their streams over a second before they exit.)
    await until_logged(server, lambda lines: count(lines, "reload done") >= 1)
    redis.stop()
    await until_logged(server, lambda lines: count(lines, "lost Redis") >= 2)
    # An outage of several heartbeats (0.5 s each here): each worker
    # says once that Redis is gone, whatever else notices it.
    await asyncio.sleep(1.5)
    redis.start()
    await until_logged(server, lambda lines: count(lines, "reconnected") >= 2)
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    secret = await client.get(SECRET_KEY)
    await client.aclose()
    text = server.log()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(set(line) >= {"time", "level", "pid", "role", "logger", "message"} for line in lines)
    said = [(line["role"], line["message"]) for line in lines]
    for pids in (first, third):
        for index, pid in pids.items():
            assert ("main", f"worker {index} is serving (pid {pid})") in said
    assert ("main", f"worker 1 (pid {first[1]}) died; starting a replacement") in said
    assert ("main", f"worker 1 is serving again (pid {second[1]})") in said
    assert ("main", "received SIGHUP: replacing 2 workers") in said
    assert ("main", "reloaded: 2 workers ready") in said
    assert ("main", "reload done: the old workers have exited") in said
    # aiotools' warning that all its workers exited: how every reload ends.
    assert not any("All child processes have terminated" in m for _, m in said), said
    # Nor does aiotools tell again how the killed worker ended.
    echoes = [line for line in lines if line["logger"].startswith("aiotools")]
    assert not any(str(first[1]) in line["message"] for line in echoes), echoes
    for index in (0, 1):
        # One line when Redis went away and one when it came back, each worker.
        mine = [message for role, message in said if role == f"worker {index}"]
        assert sum("Redis" in message for message in mine) == 2, mine
        assert sum("lost Redis" in message for message in mine) == 1, mine
        assert sum("reconnected to Redis" in message for message in mine) == 1, mine
    assert secret and secret not in text and cookie not in text
    assert cookie.rsplit(".", 1)[0] not in text  # nor the session's key


async def test_no_request_fails_on_a_connection_from_before_redis_restarted(
    start_server: Callable[..., ServerProcess],
    persistent_redis: RedisProcess,
) -> None:
    redis = persistent_redis
    server = start_server(redis_url=redis.url, workers=2, args=["--log-format", "json"])
    connector = aiohttp.TCPConnector(force_close=True, limit=0)  # both workers answer
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(server.url, connector=connector, cookie_jar=jar) as http:

        async def burst(texts: range) -> list[int]:
            async def post(text: str) -> int:
                async with http.post("/api/rooms/restart/messages", json={"text": text}) as r:
                    await r.read()
                    return r.status

            return await asyncio.gather(*(post(str(n)) for n in texts))

        await user_of(http, server.url)
        # Requests at once: each worker's pools hold several connections...
        assert set(await burst(range(40))) == {201}
        redis.stop()  # ... which Redis closes as it goes.
        await until_logged(server, lambda lines: count(lines, "lost Redis") >= 2)
        redis.start()
        await until_logged(server, lambda lines: count(lines, "reconnected") >= 2)
        statuses = await burst(range(40, 80))
    assert statuses == [201] * 40, statuses


async def changed_pids(base: str, before: dict[int, int], which: set[int]) -> dict[int, int]:
    """The workers' pids once those in ``which`` are new ones, serving."""
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                now = await worker_pids(base)
                if all(now.get(i) not in (None, before[i]) for i in which):
                    return now
            await asyncio.sleep(0.05)


def logged(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def count(lines: list[dict[str, Any]], text: str) -> int:
    return sum(text in line["message"] for line in lines)


async def until_logged(server: ServerProcess, done: Callable[[list[dict[str, Any]]], bool]) -> None:
    async with asyncio.timeout(15):
        while not done(logged(server)):
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("rediss://chat:hunter2@redis.internal/1", "rediss://chat:***@redis.internal/1"),
        ("redis://chat@redis.internal", "redis://chat@redis.internal"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis+cluster://:hunter2@10.0.0.1:7000", "redis+cluster://:***@10.0.0.1:7000"),
        (
            "redis+sentinel://:hunter2@s1:26379,s2:26379/chat?sentinel_password=sesame",
            "redis+sentinel://:***@s1:26379,s2:26379/chat?sentinel_password=***",
        ),
    ],
)
def test_a_redis_password_never_reaches_the_log(url: str, shown: str) -> None:
    assert shown_url(url) == shown
