"""A refused request writes nothing and joins nothing (real server processes, real Redis).

Floods of requests that are refused (429, 405, 404, 400, 413, 415, 403)
must leave Redis as they found it, apart from the budget counters
themselves: no session, no name, no idempotency record, no presence entry
and no presence notice on the room's channel. Otherwise a flood of refusals
fills a Redis capped by ``maxmemory`` and the next real user gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from .openapi_check import client_session
from .support import ServerProcess, user
from .test_budgets import budgets, cookieless

pytestmark = [pytest.mark.timeout(90), pytest.mark.openapi]

BUDGET_PREFIX = "chat:rate:"


class Footprint:
    """What Redis stores, apart from budget counters: its keys, and the bytes
    each takes (``MEMORY USAGE``).

    Not ``used_memory``: it also counts the buffers of Redis' clients, which
    grow and shrink with the server's connection pools under a flood and
    say nothing of what was stored.
    """

    def __init__(self, usage: dict[str, int]) -> None:
        self.usage = usage

    @classmethod
    async def of(cls, redis: aioredis.Redis) -> Footprint:
        usage: dict[str, int] = {}
        async for key in redis.scan_iter(count=1000):
            name = str(key)
            if name.startswith(BUDGET_PREFIX):
                continue
            usage[name] = int(await redis.memory_usage(name) or 0)
        return cls(usage)

    def assert_same_as(self, before: Footprint) -> None:
        assert set(self.usage) - set(before.usage) == set(), "refused requests wrote keys"
        assert set(before.usage) - set(self.usage) == set(), "refused requests deleted keys"
        grown = {k: (before.usage[k], n) for k, n in self.usage.items() if n > before.usage[k]}
        assert grown == {}, "refused requests wrote to keys"


class Channels:
    """What is published on rooms' channels (presence notices are "p")."""

    def __init__(self, redis: aioredis.Redis, *rooms: str) -> None:
        self.pubsub = redis.pubsub()
        self.rooms = rooms
        self.heard: list[tuple[str, str]] = []

    def notices(self, room: str) -> int:
        return sum(1 for channel, data in self.heard if room in channel and data == "p")

    async def heard_from(self, room: str, timeout: float = 5) -> None:
        """Wait for something other than a notice on ``room``'s channel: a
        subscriber hears a connection's messages in the order they were
        published, so whatever was published before it has been heard."""
        async with asyncio.timeout(timeout):
            while not any(room in c and d != "p" for c, d in self.heard):
                await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[Channels]:
        await self.pubsub.subscribe(*(f"chat:{{{room}}}:live" for room in self.rooms))

        async def listen() -> None:
            async for message in self.pubsub.listen():
                if message["type"] == "message":
                    self.heard.append((str(message["channel"]), str(message["data"])))

        task = asyncio.create_task(listen())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.pubsub.aclose()


async def stream_status(base: str, path: str, *, ws: bool, **kwargs: Any) -> int:
    """Open a stream as a new client (no cookie); its status (101 for a WebSocket upgrade)."""
    async with client_session(base, cookie_jar=aiohttp.DummyCookieJar()) as http:
        if ws:
            try:
                async with http.ws_connect(path, **kwargs):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
        async with http.get(path, **kwargs) as resp:
            return resp.status


async def flood(count: int, make: Callable[[int], Any], width: int = 50) -> list[int]:
    """``count`` requests, ``width`` at a time; their statuses."""
    statuses: list[int] = []
    for start in range(0, count, width):
        batch = range(start, min(count, start + width))
        statuses += await asyncio.gather(*(make(i) for i in batch))
    return statuses


async def online(redis: aioredis.Redis, room: str) -> list[str]:
    return sorted(str(u) for u in await redis.zrange(f"chat:{{{room}}}:users", 0, -1))


class Watcher:
    """A user with a stream open in "lobby", listening to the channels of
    "lobby" and "marker"."""

    def __init__(
        self, http: aiohttp.ClientSession, poster: aiohttp.ClientSession, channels: Channels
    ) -> None:
        self.http = http
        self.poster = poster  # another user, whose budgets the test leaves alone
        self.channels = channels

    async def settle(self) -> None:
        """Post to "marker" and wait to hear it: every notice published
        before it has been heard then."""
        async with self.poster.post("/api/rooms/marker/messages", json={"text": "x"}) as resp:
            assert resp.status == 201
        await self.channels.heard_from("marker")


@contextlib.asynccontextmanager
async def watched(server: ServerProcess, redis: aioredis.Redis) -> AsyncIterator[Watcher]:
    """Two users (two new sessions), one with a stream in "lobby"."""
    async with user(server.url) as http, user(server.url) as poster:
        async with http.get("/api/rooms/lobby/events") as stream:
            assert stream.status == 200
            async with Channels(redis, "lobby", "marker").listening() as channels:
                yield Watcher(http, poster, channels)


def open_streams(server: ServerProcess, count: int) -> Any:
    """``count`` new clients opening streams in "lobby", SSE and WebSocket in turn."""
    return flood(
        count,
        lambda i: stream_status(
            server.url, "/api/rooms/lobby/" + ("ws" if i % 2 else "events"), ws=bool(i % 2)
        ),
    )


async def test_stream_opens_refused_for_new_sessions_write_nothing_and_join_nothing(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2, env=budgets(address_sessions_per_min="2"))
    async with watched(server, redis) as watcher:  # the address' two new sessions
        await open_streams(server, 100)  # (Redis' clients and pools grow to the flood's size)
        before = await Footprint.of(redis)
        in_lobby = await online(redis, "lobby")
        statuses = await open_streams(server, 300)
        after = await Footprint.of(redis)  # (every refused request was answered)
        await watcher.settle()
        assert await online(redis, "lobby") == in_lobby
    assert set(statuses) == {429}, statuses
    assert watcher.channels.notices("lobby") == 0, "refused streams came and went in presence"
    after.assert_same_as(before)


async def test_stream_opens_over_the_address_limit_write_nothing_and_join_nothing(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2, env=budgets(address_streams="1"))
    async with watched(server, redis) as watcher:  # the address' one stream
        await open_streams(server, 100)
        before = await Footprint.of(redis)
        statuses = await open_streams(server, 300)
        after = await Footprint.of(redis)  # (every refused request was answered)
        await watcher.settle()
    assert set(statuses) == {429}, statuses
    assert watcher.channels.notices("lobby") == 0, "refused streams came and went in presence"
    after.assert_same_as(before)


async def test_head_on_a_stream_is_405_and_registers_nothing(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2)
    async with watched(server, redis) as watcher:
        before = await Footprint.of(redis)
        for path in ("/api/rooms/lobby/events", "/api/rooms/lobby/ws"):
            async with watcher.http.head(path) as resp:
                assert resp.status == 405
                assert resp.headers["Allow"] == "GET"
            status, headers = await cookieless(server.url, "HEAD", path)
            assert status == 405
            assert headers["Allow"] == "GET"
        after = await Footprint.of(redis)  # (every refused request was answered)
        await watcher.settle()
    assert watcher.channels.notices("lobby") == 0
    after.assert_same_as(before)


async def test_posts_refused_by_the_budgets_store_no_idempotency_record(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(
        workers=2, env=budgets(address_rate_limit_per_s="0.01", address_rate_limit_burst="3")
    )
    async with user(server.url) as http:
        for n in range(3):
            async with http.post("/api/rooms/lobby/messages", json={"text": f"{n}"}) as resp:
                assert resp.status == 201
        before = await Footprint.of(redis)

        async def post(i: int) -> int:
            headers = {"Idempotency-Key": f"key-{i}"}
            async with http.post(
                "/api/rooms/lobby/messages", json={"text": f"try {i}"}, headers=headers
            ) as resp:
                return resp.status

        statuses = await flood(400, post)
    assert set(statuses) == {429}
    (await Footprint.of(redis)).assert_same_as(before)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/api/rooms/lobby/messages", {"data": b"{not json"}, 400),
        ("POST", "/api/rooms/lobby/messages", {"json": {"text": "x" * 3000}}, 413),
        (
            "POST",
            "/api/rooms/lobby/messages",
            {"data": "x", "headers": {"Content-Type": "text/plain"}},
            415,
        ),
        ("POST", "/api/rooms/NOT_A_ROOM/messages", {"json": {"text": "x"}}, 404),
        ("DELETE", "/api/session", {}, 405),
        ("PUT", "/api/session", {"json": {"name": "a\u202eb"}}, 400),
        (
            "POST",
            "/api/rooms/lobby/messages",
            {"json": {"text": "x"}, "headers": {"Origin": "http://evil.example"}},
            403,
        ),
        ("GET", "/api/rooms/lobby/events", {"headers": {"Last-Event-ID": "nope"}}, 400),
        ("GET", "/api/rooms/lobby/ws", {}, 400),  # not an upgrade
    ],
)
async def test_refused_requests_of_new_clients_write_nothing(
    start_server: Callable[..., ServerProcess],
    redis: aioredis.Redis,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
) -> None:
    server = start_server(workers=1)
    before = await Footprint.of(redis)
    statuses = await flood(100, lambda _: cookieless(server.url, method, path, **kwargs))
    assert {s for s, _ in statuses} == {status}
    (await Footprint.of(redis)).assert_same_as(before)


async def test_renames_spend_the_message_budgets_and_refused_ones_change_nothing(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2, env=budgets(rate_limit_per_s="0.01", rate_limit_burst="5"))
    async with watched(server, redis) as watcher:
        before = await Footprint.of(redis)

        async def rename(i: int) -> tuple[int, Any]:
            async with watcher.http.put("/api/session", json={"name": f"Name {i}"}) as resp:
                return resp.status, resp.headers

        answers = await flood(200, rename)
        after = await Footprint.of(redis)  # (every refused request was answered)
        await watcher.settle()
        async with watcher.http.get("/api/session") as resp:
            name = (await resp.json())["name"]
    statuses = [status for status, _ in answers]
    assert statuses.count(200) <= 5  # (the user's burst; the rate adds none in this time)
    assert statuses.count(429) >= 195
    assert all(int(headers["Retry-After"]) >= 1 for status, headers in answers if status == 429)
    accepted = {f"Name {i}" for i, (status, _) in enumerate(answers) if status == 200}
    assert name in accepted
    # At most one notice a rename: the presence of the rooms the user is in.
    assert watcher.channels.notices("lobby") <= len(accepted)
    after.assert_same_as(before)  # (a name key is rewritten in place: no growth)


async def test_renames_of_new_clients_spend_the_address_budgets(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(
        workers=2, env=budgets(address_rate_limit_per_s="0.01", address_rate_limit_burst="3")
    )
    before = await Footprint.of(redis)
    answers = await flood(
        60, lambda i: cookieless(server.url, "PUT", "/api/session", json={"name": f"N{i}"})
    )
    statuses = [status for status, _ in answers]
    assert statuses.count(200) == 3, statuses
    assert statuses.count(429) == 57
    after = await Footprint.of(redis)
    # Three sessions with their names, and nothing of the refused ones.
    assert len(set(after.usage) - set(before.usage)) == 6


async def test_one_key_sent_to_two_rooms_at_once_stores_one_message(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = start_server(workers=2)
    async with user(server.url) as http:

        async def send(room: str, key: str) -> tuple[int, Any]:
            headers = {"Idempotency-Key": key}
            async with http.post(
                f"/api/rooms/{room}/messages", json={"text": key}, headers=headers
            ) as resp:
                return resp.status, await resp.json()

        for n in range(40):
            key = f"race-{n}"
            answers = await asyncio.gather(send("north", key), send("south", key))
            stored = [
                entry
                for room in ("north", "south")
                for _, entry in await redis.xrange(f"chat:{{{room}}}:messages")
                if key in str(entry)
            ]
            assert len(stored) == 1, (key, answers)
            statuses = sorted(status for status, _ in answers)
            assert statuses in ([201, 201], [201, 409]), answers
            ids = {body["message"]["id"] for status, body in answers if status == 201}
            assert len(ids) == 1, answers  # a retry gets the first message itself
            conflict = [body for status, body in answers if status == 409]
            assert all(body["error"]["code"] == "idempotency_conflict" for body in conflict)
