"""What one client address may cost, against a real multi-worker server and Redis.

Identity is free (a new session per cookie-less request), so every budget
that matters is also kept per client address: new sessions, messages and
open streams. Behind a trusted proxy the address is the forwarded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness.redis_servers import RedisProcess
from server.process.cli import SECRET_KEY

from .openapi_check import client_session
from .support import ServerProcess

pytestmark = [pytest.mark.timeout(90), pytest.mark.openapi]

UNLIMITED = "1000000"


def budgets(**low: str) -> dict[str, str]:
    """Every address budget unlimited but the ones given (as CHAT_* variables)."""
    env = {
        "CHAT_ADDRESS_SESSIONS_PER_MIN": UNLIMITED,
        "CHAT_ADDRESS_RATE_LIMIT_PER_S": UNLIMITED,
        "CHAT_ADDRESS_RATE_LIMIT_BURST": UNLIMITED,
        "CHAT_ADDRESS_STREAMS": UNLIMITED,
        "CHAT_ADDRESS_CONNECTIONS": UNLIMITED,
        "CHAT_ADDRESS_ROOMS_PER_MIN": UNLIMITED,
    }
    env.update({f"CHAT_{key.upper()}": value for key, value in low.items()})
    return env


async def cookieless(base: str, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request as a new client: no cookie jar, a connection of its own."""
    async with (
        client_session(base, cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.request(method, path, **kwargs) as resp,
    ):
        return resp.status, resp.headers


async def test_cookieless_clients_of_one_address_share_one_message_budget(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        workers=2, env=budgets(address_rate_limit_per_s="1", address_rate_limit_burst="10")
    )
    started = time.monotonic()

    async def client(n: int) -> list[int]:
        return [
            (
                await cookieless(
                    server.url, "POST", "/api/rooms/lobby/messages", json={"text": f"{n}.{i}"}
                )
            )[0]
            for i in range(3)
        ]

    statuses = [s for batch in await asyncio.gather(*(client(n) for n in range(50))) for s in batch]
    elapsed = time.monotonic() - started
    assert set(statuses) <= {201, 429}
    # The burst, plus what the rate refilled meanwhile (and one for rounding).
    assert statuses.count(201) <= 10 + int(elapsed * 1) + 1, (statuses.count(201), elapsed)
    assert statuses.count(429) >= 150 - 10 - int(elapsed) - 1
    status, headers = await cookieless(
        server.url, "POST", "/api/rooms/lobby/messages", json={"text": "more"}
    )
    assert status == 429 and int(headers["Retry-After"]) >= 1
    await metrics_show(server.url, 'chat_rate_limited_total{kind="address_messages"}')


def assert_per_minute_budget(statuses: list[int], ok: int, budget: int) -> None:
    """Of requests made in quick succession, the first ``budget`` passed (``ok``)
    and no more but perhaps one the rate refilled meanwhile."""
    assert statuses.count(ok) in (budget, budget + 1), statuses
    assert statuses[:budget] == [ok] * budget


async def metrics_show(base: str, series: str) -> None:
    """Wait until /metrics counts ``series`` above 0."""
    async with client_session(base) as http, asyncio.timeout(10):
        while True:
            async with http.get("/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith(series + " ") and float(line.rsplit(" ", 1)[1]) > 0:
                        return
            await asyncio.sleep(0.1)


async def test_new_sessions_per_address_are_limited(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env=budgets(address_sessions_per_min="5"))
    statuses = [(await cookieless(server.url, "GET", "/api/session"))[0] for _ in range(20)]
    assert_per_minute_budget(statuses, 200, 5)
    await metrics_show(server.url, 'chat_rate_limited_total{kind="address_sessions"}')


async def test_cookieless_streams_spend_the_new_session_budget_and_a_refused_one_leaves_nothing(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess
) -> None:
    server = start_server(
        workers=2, redis_url=own_redis.url, env=budgets(address_sessions_per_min="4")
    )
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        async with client_session(server.url, cookie_jar=aiohttp.DummyCookieJar()) as http:
            # Four new visitors, each with a stream and no cookie: each is a session.
            sse = [await http.get("/api/rooms/lobby/events") for _ in range(2)]
            ws = [await http.ws_connect("/api/rooms/lobby/ws") for _ in range(2)]
            try:
                assert [r.status for r in sse] == [200, 200]
                async with http.get("/api/rooms/lobby/events") as refused:
                    assert refused.status == 429
                    assert int(refused.headers["Retry-After"]) >= 1
                    assert (await refused.json())["error"]["code"] == "rate_limited"
                with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
                    await http.ws_connect("/api/rooms/lobby/ws")
                assert handshake.value.status == 429
                # The refused ones left no session and hold no stream.
                assert len(await client.keys("chat_session_*")) == 4
                held = await client.keys("chat:address:*:streams")
                assert [await client.zcard(key) for key in held] == [4]
            finally:
                for resp in sse:
                    resp.close()
                for conn in ws:
                    await conn.close()
    finally:
        await client.aclose()
    await metrics_show(server.url, 'chat_rate_limited_total{kind="address_sessions"}')


async def test_open_streams_per_address_are_limited(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env=budgets(address_streams="5"))
    async with client_session(server.url, cookie_jar=aiohttp.DummyCookieJar()) as http:
        responses = [await http.get("/api/rooms/lobby/events") for _ in range(8)]
        try:
            statuses = [r.status for r in responses]
            assert statuses.count(200) == 5, statuses
            refused = next(r for r in responses if r.status == 429)
            assert (await refused.json())["error"]["code"] == "too_many_streams"
            assert int(refused.headers["Retry-After"]) >= 1
        finally:
            for r in responses:
                r.close()
        # Closed streams give their slots back.
        async with asyncio.timeout(10):
            while True:
                async with http.get("/api/rooms/lobby/events") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)


async def test_open_connections_per_address_are_limited_in_each_worker(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Any connection, not only streams: the sixth of an address is answered 429
    as it is accepted, and another address is not affected."""
    server = start_server(workers=1, env=budgets(address_connections="5", address_streams="5"))
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, int(port), local_addr=(source, 0))

    async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        assert length is not None, head
        return head, await reader.readexactly(int(length[1]))

    writers = []
    try:
        for _ in range(5):
            reader, writer = await connect("127.0.0.1")
            writers.append(writer)
            writer.write(request)
            assert (await answer(reader))[0].startswith(b"HTTP/1.1 200 ")
        reader, writer = await connect("127.0.0.1")
        writers.append(writer)
        writer.write(request)
        head, body = await answer(reader)
        assert head.startswith(b"HTTP/1.1 429 ") and b"Retry-After: 5\r\n" in head, head
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        # And closed (reset, if the request came after the close).
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
        reader, writer = await connect("127.0.0.2")
        writers.append(writer)
        writer.write(request)
        assert (await answer(reader))[0].startswith(b"HTTP/1.1 200 ")
    finally:
        for writer in writers:
            writer.close()
    await metrics_show(server.url, 'chat_rate_limited_total{kind="address_connections"}')


async def test_new_rooms_per_address_are_limited(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env=budgets(address_rooms_per_min="3"))
    statuses = []
    for i in range(10):
        path = f"/api/rooms/new-{i}/messages"
        statuses.append((await cookieless(server.url, "POST", path, json={"text": "x"}))[0])
    assert_per_minute_budget(statuses, 201, 3)
    # Rooms that exist take messages as before.
    for _ in range(5):
        status, _ = await cookieless(
            server.url, "POST", "/api/rooms/new-0/messages", json={"text": "more"}
        )
        assert status == 201
    await metrics_show(server.url, 'chat_rate_limited_total{kind="address_rooms"}')


async def post_as(server: ServerProcess, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    status, _ = await cookieless(
        server.url, "POST", "/api/rooms/lobby/messages", json={"text": "x"}, headers=headers
    )
    return status


async def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_budget(
    start_server: Callable[..., ServerProcess],
) -> None:
    low = {"address_rate_limit_per_s": "0.01", "address_rate_limit_burst": "2"}
    trusted = start_server(workers=1, env=budgets(trusted_proxies="127.0.0.1", **low))
    for _ in range(2):
        assert await post_as(trusted, "10.0.0.1") == 201
    assert await post_as(trusted, "10.0.0.1") == 429
    # Another client behind the same proxy; a spoofed entry further left is not believed.
    assert await post_as(trusted, "10.0.0.1, 10.0.0.2") == 201
    # Without the proxy trusted, the header is anyone's to write: ignored.
    untrusted = start_server(workers=1, env=budgets(**low))
    assert await post_as(untrusted, "10.0.0.1") == 201
    assert await post_as(untrusted, "10.0.0.2") == 201
    assert await post_as(untrusted, "10.0.0.3") == 429


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own: every key in it is this test's doing."""
    redis = RedisProcess()
    redis.start()
    yield redis
    redis.cleanup()


async def test_cookieless_requests_leave_nothing_that_lives_over_an_hour(
    start_server: Callable[..., ServerProcess], own_redis: RedisProcess
) -> None:
    server = start_server(workers=2, redis_url=own_redis.url)
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:
        # Requests that fail make no key at all.
        before = set(await client.keys("*"))
        for method, path, kwargs in [
            ("PATCH", "/api/session", {}),
            ("DELETE", "/api/rooms/lobby/messages", {}),
            ("POST", "/api/rooms/Not A Room/messages", {"json": {"text": "x"}}),
            ("POST", "/api/rooms/lobby/messages", {"json": {"text": ""}}),
            (
                "POST",
                "/api/rooms/lobby/messages",
                {"data": b"{", "headers": {"Content-Type": "application/json"}},
            ),
            ("PUT", "/api/session", {"json": {"name": "\u202eevil"}}),
            ("GET", "/api/rooms/lobby/events", {"params": {"last_event_id": "x"}}),
            ("GET", "/nowhere", {}),
        ]:
            status, _ = await cookieless(server.url, method, path, **kwargs)
            assert 400 <= status < 500, (method, path, status)
        assert set(await client.keys("*")) <= before

        async def one_of_each(n: int) -> None:
            for method, path, kwargs in [
                ("GET", "/api/session", {}),
                ("PUT", "/api/session", {"json": {"name": f"Visitor {n}"}}),
                ("POST", "/api/rooms/lobby/messages", {"json": {"text": f"hello {n}"}}),
                ("GET", "/api/rooms/lobby/messages", {}),
                ("GET", "/", {}),
            ]:
                status, _ = await cookieless(server.url, method, path, **kwargs)
                assert status < 400, (method, path, status)
            async with client_session(server.url, cookie_jar=aiohttp.DummyCookieJar()) as http:
                async with http.get("/api/rooms/lobby/events") as resp:
                    assert resp.status == 200
                async with http.ws_connect("/api/rooms/lobby/ws"):
                    pass

        for start in range(0, 144, 24):  # 7 requests each: 1,008 in all
            await asyncio.gather(*(one_of_each(n) for n in range(start, start + 24)))
        lasting = {}
        keys = await client.keys("*")
        assert sum(key.startswith("chat_session_") for key in keys) >= 144  # sessions were made
        for key in keys:
            if key.endswith(":messages") or key == SECRET_KEY:
                continue  # the room's history, and the server's secret
            if key.startswith("chat:registry:"):  # the rooms with history: as long as they
                assert await client.ttl(key) > 0
                continue
            ttl = await client.ttl(key)
            if ttl == -1 or ttl > 3600:
                lasting[key] = ttl
        assert lasting == {}
    finally:
        await client.aclose()


async def test_a_session_used_again_lives_its_full_age(client: Any, redis: Any) -> None:
    async with client.get("/api/session") as resp:
        assert resp.status == 200
    cookie = resp.cookies["chat_session"].value
    key = "chat_session_" + cookie.rsplit(".", 1)[0]
    assert 3500 < await redis.ttl(key) <= 3600
    async with client.get("/api/session") as resp:
        assert resp.status == 200
    assert await redis.ttl(key) > 3600
