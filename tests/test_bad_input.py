"""What hostile or broken clients send, over real sockets to a real multi-worker server.

Each input gets a clear answer (never a 500, never a 503 for bad input), and
nothing reaches the log as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import redis.asyncio as aioredis

from .openapi_check import client_session
from .support import ServerProcess

pytestmark = [pytest.mark.timeout(60), pytest.mark.openapi]


@pytest.fixture
async def server(start_server: Callable[..., ServerProcess]) -> AsyncIterator[ServerProcess]:
    server = start_server(workers=2)
    yield server
    assert "Traceback" not in server.log()


async def raw(server: ServerProcess, head: bytes, body: bytes = b"") -> tuple[int, str, bytes]:
    """Send bytes as they are; the status, the headers and the body of the answer."""
    parts = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.replace(b"\n", b"\r\n") + b"Connection: close\r\n\r\n" + body)
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
    finally:
        writer.close()
    head_text, _, rest = answer.partition(b"\r\n\r\n")
    status_line, _, headers = head_text.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), headers, rest


def json_of(body: bytes) -> Any:
    # Chunked or not: the JSON object is the part between the outer braces.
    return json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])


@pytest.mark.parametrize(
    "cookie",
    [
        b"chat_session=\xc3\xbc\xc3\xbc.abc",  # not ASCII
        b"chat_session=garbage",
        b"chat_session=" + b"a" * 3000 + b".b",
        b"chat_session=\xff\xfe",  # not even UTF-8
    ],
)
async def test_any_cookie_gets_a_fresh_session(server: ServerProcess, cookie: bytes) -> None:
    status, headers, body = await raw(
        server, b"GET /api/session HTTP/1.1\nHost: 127.0.0.1\nCookie: " + cookie + b"\n"
    )
    assert status == 200
    assert json_of(body)["user_id"].startswith("u-")
    assert "chat_session=" in headers  # a new cookie replaces it


@pytest.mark.parametrize("upgrade", [b"\x80", b"h2c", b"websocket\xff"])
async def test_a_websocket_request_with_a_bad_upgrade_header_is_a_400(
    server: ServerProcess, upgrade: bytes
) -> None:
    status, _, body = await raw(
        server,
        b"GET /api/rooms/general/ws HTTP/1.1\nHost: 127.0.0.1\nUpgrade: " + upgrade + b"\n",
    )
    assert status == 400
    assert json_of(body)["error"]["code"] == "bad_request"


async def test_ids_are_checked_before_they_reach_redis(server: ServerProcess) -> None:
    async with client_session(server.url) as http:
        messages = "/api/rooms/lobby/messages"
        for text in ("one", "two"):
            async with http.post(messages, json={"text": text}) as resp:
                assert resp.status == 201
        async with http.get(messages, params={"before": "0-0"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["messages"] == []
        # Arabic-Indic digits are digits to Python, not to Redis.
        for value in ("\u0661\u0662\u0663-0", "1-\u0660", "１２３"):
            async with http.get(messages, params={"before": value}) as resp:
                assert resp.status == 400, value
            async with http.get("/api/rooms/lobby/events", params={"last_event_id": value}) as resp:
                assert resp.status == 400, value


async def test_a_resume_id_from_the_future_resumes_from_now(server: ServerProcess) -> None:
    top = "18446744073709551615-18446744073709551615"
    async with client_session(server.url) as http:
        async with (
            http.get("/api/rooms/future/events", params={"last_event_id": top}) as sse,
            http.ws_connect("/api/rooms/future/ws", params={"since": top}) as ws,
        ):
            assert sse.status == 200
            async with http.post("/api/rooms/future/messages", json={"text": "hi"}) as resp:
                sent = (await resp.json())["message"]["id"]
            async with asyncio.timeout(10):
                while True:  # the WebSocket gets it, not a close
                    frame = await ws.receive_json()
                    if frame["type"] == "message":
                        assert frame["message"]["id"] == sent
                        break
                while (line := await sse.content.readline()) != f"id: {sent}\n".encode():
                    assert line, "the SSE stream ended"


async def test_websocket_refs_must_be_finite(server: ServerProcess) -> None:
    async with (
        client_session(server.url) as http,
        http.ws_connect("/api/rooms/lobby/ws") as ws,
    ):
        await ws.send_str('{"type": "message", "text": "x", "ref": 1e999}')
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.receive_str()))["type"] != "error":
                pass
        assert frame["ref"] is None
        assert "finite" in frame["error"]["message"]
        await ws.send_str('{"type": "message", "text": "still open", "ref": 7}')
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.receive_str()))["type"] != "ack":
                pass
        assert frame["ref"] == 7


async def test_a_write_redis_refuses_gets_an_error_frame(
    server: ServerProcess, redis: aioredis.Redis
) -> None:
    async with (
        client_session(server.url) as http,
        http.ws_connect("/api/rooms/lobby/ws") as ws,
    ):
        limit = (await redis.config_get("maxmemory"))["maxmemory"]
        await redis.config_set("maxmemory", 1)  # every write is refused: out of memory
        try:
            await ws.send_str('{"type": "message", "text": "x", "ref": "a"}')
            async with asyncio.timeout(10):
                while (frame := json.loads(await ws.receive_str()))["type"] != "error":
                    pass
        finally:
            await redis.config_set("maxmemory", limit)
        assert frame["ref"] == "a"
        assert frame["error"]["code"] == "storage_full"
        await ws.send_str('{"type": "message", "text": "after", "ref": "b"}')
        async with asyncio.timeout(10):
            while (frame := json.loads(await ws.receive_str()))["type"] != "ack":
                pass
        assert frame["ref"] == "b"


async def test_plain_text_bodies_are_refused(server: ServerProcess) -> None:
    async with client_session(server.url) as http:
        async with http.post(
            "/api/rooms/lobby/messages",
            data='{"text": "hi"}',
            headers={"Content-Type": "text/plain"},
        ) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_a_host_the_server_does_not_know_is_refused(server: ServerProcess) -> None:
    port = urlsplit(server.url).port
    # DNS rebinding: the page's own name resolves to this server.
    head = b"POST /api/rooms/lobby/messages HTTP/1.1\nHost: evil.example:%d\n" % port
    head += b"Origin: http://evil.example:%d\nContent-Type: application/json\n" % port
    body = b'{"text": "rebound"}'
    status, _, answer = await raw(server, head + b"Content-Length: %d\n" % len(body), body)
    assert status == 400
    assert json_of(answer)["error"]["code"] == "unknown_host"
    # Addresses and localhost are known, on any port (a proxy may forward one).
    for host in (b"127.0.0.1:8443", b"localhost:8443", b"[::1]:8443"):
        head = b"POST /api/rooms/lobby/messages HTTP/1.1\nHost: " + host + b"\n"
        head += b"Origin: http://" + host + b"\nContent-Type: application/json\n"
        status, _, _ = await raw(server, head + b"Content-Length: %d\n" % len(body), body)
        assert status == 201, host
    # Health checks come by any name.
    status, _, _ = await raw(server, b"GET /healthz HTTP/1.1\nHost: chat.internal\n")
    assert status == 200


async def test_with_a_public_origin_only_it_may_write(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=1, env={"CHAT_PUBLIC_ORIGIN": "https://chat.example.com"})
    body = b'{"text": "hi"}'
    for origin, expected in (
        (b"https://chat.example.com", 201),
        (b"http://chat.example.com", 403),
        (b"http://127.0.0.1", 403),
    ):
        head = b"POST /api/rooms/lobby/messages HTTP/1.1\nHost: chat.example.com\n"
        head += b"Origin: " + origin + b"\nContent-Type: application/json\n"
        status, _, _ = await raw(server, head + b"Content-Length: %d\n" % len(body), body)
        assert status == expected, origin
    assert "Traceback" not in server.log()


MALFORMED_HOSTS = [b"[::1", b"[evil]", b"a:99999", b"[::1]:x", b"]", b"[::1]]", b"\xc3\xbc"]
MALFORMED_ORIGINS = [b"http://[", b"http://[::1", b"http://a:99999", b"http://[::1]:x"]


async def test_a_malformed_host_or_origin_is_refused_without_a_log_line(
    server: ServerProcess,
) -> None:
    logged = len(server.log().splitlines())
    body = b'{"text": "x"}'
    for host in MALFORMED_HOSTS:
        for path in (b"/", b"/api/session", b"/api/rooms/lobby/messages", b"/healthz"):
            for method in (b"GET", b"POST"):
                head = method + b" " + path + b" HTTP/1.1\nHost: " + host + b"\n"
                head += b"Content-Type: application/json\nContent-Length: %d\n" % len(body)
                status, _, answer = await raw(server, head, body)
                assert status == 400, (method, path, host)
                assert json_of(answer)["error"]["code"] == "bad_host"
    # A write's Origin is compared with the server's own: a malformed one is
    # not it (a read does not look at it).
    for origin in MALFORMED_ORIGINS:
        head = b"POST /api/rooms/lobby/messages HTTP/1.1\nHost: 127.0.0.1\nOrigin: " + origin
        head += b"\nContent-Type: application/json\nContent-Length: %d\n" % len(body)
        status, _, answer = await raw(server, head, body)
        assert status == 403, origin
        assert json_of(answer)["error"]["code"] == "forbidden"
        status, _, _ = await raw(
            server, b"GET /api/session HTTP/1.1\nHost: 127.0.0.1\nOrigin: " + origin + b"\n"
        )
        assert status == 200, origin
    async with client_session(server.url) as http:
        async with http.get("/api/rooms/lobby/messages") as resp:
            assert (await resp.json())["messages"] == []  # nothing was stored
    # (The fixture checks for tracebacks.) Refusals are not logged at info level.
    new = server.log().splitlines()[logged:]
    assert not [line for line in new if " ERROR " in line or " WARNING " in line], new


FORGED = "2026-01-01 00:00:00,000 ERROR 1 worker 0 server.web.middlewares: forged"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_what_a_client_sends_cannot_forge_a_log_line(
    start_server: Callable[..., ServerProcess], log_format: str
) -> None:
    # At debug level every request is in the access log, with its User-Agent.
    env = {"CHAT_LOG_LEVEL": "debug", "CHAT_LOG_FORMAT": log_format}
    server = start_server(workers=1, env=env)
    path = b"/x%0a" + quote(FORGED).encode()
    # A newline in the path of requests refused for their Host or Origin.
    status, _, _ = await raw(server, b"GET " + path + b" HTTP/1.1\nHost: [::1\n")
    assert status == 400
    head = b"POST " + path + b" HTTP/1.1\nHost: 127.0.0.1\nOrigin: http://[\nContent-Length: 0\n"
    status, _, _ = await raw(server, head)
    assert status == 403
    # Line breaks that reach a header value (next line, line and paragraph separators).
    for brk in ("\x85", "\u2028", "\u2029"):
        head = b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\nUser-Agent: x" + (brk + FORGED).encode()
        status, _, _ = await raw(server, head + b"\n")
        assert status == 200
    # One worker logs them in order: once this one is in, all are.
    await raw(server, b"GET /healthz?last HTTP/1.1\nHost: 127.0.0.1\n")
    deadline = time.monotonic() + 10
    while "/healthz?last" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        await asyncio.sleep(0.05)
    log = server.log()
    lines = log.splitlines()  # which breaks lines at each of those too
    assert not [line for line in lines if line.startswith(FORGED)], log[-3000:]
    if log_format == "json":
        for line in lines:
            json.loads(line)
    # Each is logged, escaped (the same escape in both formats).
    assert "x\\u2028" + FORGED in log and "x\\u2029" + FORGED in log
    assert "Traceback" not in log
