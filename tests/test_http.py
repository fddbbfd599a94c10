"""The HTTP interface in-process: sessions, history, posting, and every kind of bad input."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import pytest
from aiohttp import web

from server.store.broker import Broker, stream_key
from server.store.keys import name_key
from server.web import state as keys
from server.web.edge import Edge
from server.web.sessions import RESAVE_AFTER_S, USED

from .support import error_of

pytestmark = pytest.mark.openapi

ROOM = "/api/rooms/general/messages"


async def test_session_gives_a_random_user_id_in_an_opaque_signed_cookie(client: Any) -> None:
    resp = await client.get("/api/session")
    assert resp.status == 200
    me = await resp.json()
    assert me["user_id"].startswith("u-") and len(me["user_id"]) >= 2 + 16
    assert 1 <= len(me["name"]) <= 32
    cookie = resp.cookies["chat_session"]
    assert me["user_id"] not in cookie.value and me["name"] not in cookie.value
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    # Same cookie, same identity.
    assert await (await client.get("/api/session")).json() == me


async def test_two_browsers_get_different_user_ids(client: Any, aiohttp_client: Any) -> None:
    other = await aiohttp_client(client.server)
    first = await (await client.get("/api/session")).json()
    second = await (await other.get("/api/session")).json()
    assert first["user_id"] != second["user_id"]


async def test_client_cannot_choose_its_user_id(client: Any) -> None:
    me = await (await client.get("/api/session")).json()
    resp = await client.post(ROOM, json={"text": "hi", "user_id": "u-evil", "name": "Mallory"})
    assert resp.status == 201
    message = (await resp.json())["message"]
    assert message["user_id"] == me["user_id"] and message["name"] == me["name"]
    resp = await client.put("/api/session", json={"name": "Alice", "user_id": "u-evil"})
    assert (await resp.json())["user_id"] == me["user_id"]


async def test_forged_session_cookie_gets_a_new_identity(client: Any) -> None:
    me = await (await client.get("/api/session")).json()
    key = client.session.cookie_jar.filter_cookies(client.make_url("/"))["chat_session"].value
    forged = key.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
    resp = await client.get("/api/session", cookies={"chat_session": forged})
    assert (await resp.json())["user_id"] != me["user_id"]


async def test_a_session_in_use_lives_on_a_day_at_a_time(client: Any, redis: Any) -> None:
    me = await (await client.get("/api/session")).json()
    await client.get("/api/session")  # used: saved with its full age
    (key,) = [key async for key in redis.scan_iter("chat_session_*")]
    name = name_key(me["user_id"])
    full = await redis.ttl(key)
    assert full > 3600 and abs(await redis.ttl(name) - full) <= 2
    # Used again the same day: nothing is written.
    before = json.loads(await redis.get(key))
    await client.get("/api/session")
    assert json.loads(await redis.get(key)) == before
    # A day after it was last saved (and with little time left), using it
    # gives the session and its name their full age again.
    before["session"][USED] -= RESAVE_AFTER_S + 1
    await redis.set(key, json.dumps(before), ex=100)
    await redis.expire(name, 100)
    assert (await (await client.get("/api/session")).json()) == me
    assert await redis.ttl(key) > full - 5 and await redis.ttl(name) > full - 5


async def test_rename_is_kept_and_used_for_new_messages(client: Any) -> None:
    resp = await client.put("/api/session", json={"name": "  Ada   Lovelace "})
    assert resp.status == 200
    assert (await resp.json())["name"] == "Ada Lovelace"
    assert (await (await client.get("/api/session")).json())["name"] == "Ada Lovelace"
    message = (await (await client.post(ROOM, json={"text": "x"})).json())["message"]
    assert message["name"] == "Ada Lovelace"


@pytest.mark.parametrize("name", ["", "   ", "x" * 33, 42, None, "a\x07b"])
async def test_bad_names_are_refused(client: Any, name: Any) -> None:
    await error_of(await client.put("/api/session", json={"name": name}), 400)


async def test_post_then_history_oldest_first_with_limit_and_before(client: Any) -> None:
    ids = []
    for i in range(5):
        resp = await client.post(ROOM, json={"text": f"m{i}"})
        assert resp.status == 201
        ids.append((await resp.json())["message"]["id"])
    history = (await (await client.get(ROOM)).json())["messages"]
    assert [m["id"] for m in history] == ids
    assert [m["text"] for m in history] == [f"m{i}" for i in range(5)]
    assert set(history[0]) == {"id", "room", "user_id", "name", "text", "ts"}
    last_two = (await (await client.get(ROOM + "?limit=2")).json())["messages"]
    assert [m["id"] for m in last_two] == ids[3:]
    older = (await (await client.get(f"{ROOM}?limit=2&before={ids[3]}")).json())["messages"]
    assert [m["id"] for m in older] == ids[1:3]


async def test_history_over_several_pages_is_the_same_json_written_in_pieces(
    make_app: Any, aiohttp_client: Any
) -> None:
    """At 40,000 characters a message, a page read from Redis holds 2 messages:
    longer histories are written a page at a time, chunked, the JSON unchanged."""
    paged = await aiohttp_client(await make_app(message_max_chars=40_000))
    whole = await aiohttp_client(await make_app())  # 50 a page: one piece
    texts = [f'{n} é \u2028 "quoted"' + "z" * (n * 997) for n in range(7)]
    ids = []
    for text in texts:
        resp = await paged.post(ROOM, json={"text": text})
        assert resp.status == 201
        ids.append((await resp.json())["message"]["id"])
    queries = ["", "?limit=5", "?limit=4", "?limit=2", "?limit=1", f"?limit=3&before={ids[5]}"]
    for query in queries:
        resp = await paged.get(ROOM + query)
        expected = await whole.get(ROOM + query)
        assert resp.status == expected.status == 200
        assert resp.headers["Content-Type"] == expected.headers["Content-Type"]
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        body = await resp.read()
        assert body == await expected.read(), query
        # Written in pieces only when the answer takes more than a page.
        pages = len(json.loads(body)["messages"])
        assert (resp.headers.get("Transfer-Encoding") == "chunked") == (pages > 2), query
    history = (await (await paged.get(ROOM + "?limit=5")).json())["messages"]
    assert [m["id"] for m in history] == ids[2:]
    assert [m["text"] for m in history] == texts[2:]
    older = (await (await paged.get(f"{ROOM}?limit=3&before={ids[5]}")).json())["messages"]
    assert [m["id"] for m in older] == ids[2:5]
    resp = await paged.head(ROOM)
    assert resp.status == 200 and await resp.read() == b""


async def test_history_that_fails_between_pieces_ends_unfinished(
    make_app: Any, redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Too late for an error answer: the body ends without its last chunk, so
    no client takes the first piece for the whole page. (Served through the
    edge, whose fixed socket buffer makes the handler wait for the client.)"""
    app = await make_app(message_max_chars=300_000)  # 1 message a piece
    broker = Broker(redis, history_len=100)
    for n in range(3):
        await broker.publish("general", "u-1", "Ann", f"{n}" * 300_000)
    runner = web.AppRunner(app)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    edge = Edge(runner, listener, app[keys.CONFIG])
    await edge.start()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, listener.getsockname())
        request = f"GET {ROOM}?limit=3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        assert await loop.sock_recv(sock, 1) == b"H"
        # The handler waits for the client to take the first piece: the
        # room's stream is not one any more when it reads the next.
        await redis.delete(stream_key("general"))
        await redis.set(stream_key("general"), "not a stream")
        data = b"H"
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(sock, 1 << 16):
                data += chunk
    finally:
        sock.close()
        await edge.stop()
        await runner.cleanup()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
    assert b'{"messages":[{' in body and b"0" * 300_000 in body
    assert b"1" * 1000 not in body and not body.endswith(b"0\r\n\r\n")
    assert "Traceback" not in caplog.text
    # (The rest of a page is read by a script: Redis names it before the error.)
    assert re.search(r"cut an answer short: Redis failed: .*WRONGTYPE", caplog.text)


async def test_form_posts_are_accepted(client: Any) -> None:
    resp = await client.post(ROOM, data={"text": "from a form"})
    assert resp.status == 201
    assert (await resp.json())["message"]["text"] == "from a form"


async def test_html_is_stored_as_typed(client: Any) -> None:
    text = '<script>alert("x")</script> & <b>bold</b>'
    resp = await client.post(ROOM, json={"text": text})
    assert (await resp.json())["message"]["text"] == text
    history = (await (await client.get(ROOM)).json())["messages"]
    assert history[-1]["text"] == text


async def test_history_is_capped(make_app: Any, aiohttp_client: Any, redis: Any) -> None:
    client = await aiohttp_client(await make_app(history_len=10, rate_limit_burst=1000))
    for i in range(300):
        assert (await client.post(ROOM, json={"text": str(i)})).status == 201
    # XADD MAXLEN ~ trims whole stream nodes only: the stream keeps the cap and
    # less than one node more (300 untrimmed messages would be well over that).
    node = int((await redis.config_get("stream-node-max-entries"))["stream-node-max-entries"])
    assert 10 + node < 300
    length = await redis.xlen(stream_key("general"))
    assert 10 <= length < 10 + node
    history = (await (await client.get(ROOM + "?limit=200")).json())["messages"]
    assert len(history) == length
    assert history[-1]["text"] == "299"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"{not json", {"Content-Type": "application/json"}),
        (b"[1, 2]", {"Content-Type": "application/json"}),
        (b'"text"', {"Content-Type": "application/json"}),
        (b"{}", {"Content-Type": "application/json"}),
        (b'{"text": 5}', {"Content-Type": "application/json"}),
        (b'{"text": null}', {"Content-Type": "application/json"}),
        (b'{"text": ["a"]}', {"Content-Type": "application/json"}),
        (b'{"text": ""}', {"Content-Type": "application/json"}),
        (b'{"text": "   \\n\\t "}', {"Content-Type": "application/json"}),
        (b'{"text": "\\ud800"}', {"Content-Type": "application/json"}),
        (b'{"text": "a\\u0000b"}', {"Content-Type": "application/json"}),
        (b'{"text": "\xff\xfe"}', {"Content-Type": "application/json"}),
        (b"[" * 50_000, {"Content-Type": "application/json"}),
        (b"", {}),
        (b"text=", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"text=%FF%FE", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"text=x", {"Content-Type": "application/x-www-form-urlencoded; charset=nonsense"}),
        (b"text=x", {"Content-Type": "multipart/form-data"}),
        (b'{"text": NaN}', {"Content-Type": "application/json"}),
    ],
)
async def test_malformed_posts_get_400(client: Any, body: bytes, headers: dict[str, str]) -> None:
    await error_of(await client.post(ROOM, data=body, headers=headers), 400)
    assert (await (await client.get(ROOM)).json())["messages"] == []


async def test_too_long_text_gets_413(client: Any) -> None:
    await error_of(await client.post(ROOM, json={"text": "x" * 2001}), 413)
    assert (await client.post(ROOM, json={"text": "x" * 2000})).status == 201


async def test_too_large_body_gets_413(client: Any) -> None:
    body = b'{"text": "' + b"x" * 70_000 + b'"}'
    await error_of(
        await client.post(ROOM, data=body, headers={"Content-Type": "application/json"}), 413
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/rooms/General/messages",
        "/api/rooms/-x/messages",
        "/api/rooms/" + "a" * 33 + "/messages",
        "/api/rooms/a.b/messages",
        "/api/rooms/%C3%A9/messages",
        "/api/rooms/ab%00/events",
        "/api/rooms/UP/ws",
        "/rooms/NOPE",
    ],
)
async def test_invalid_room_names_get_404(client: Any, path: str) -> None:
    await error_of(await client.get(path), 404)


async def test_unknown_path_404_and_wrong_method_405(client: Any) -> None:
    await error_of(await client.get("/nope"), 404)
    error = await error_of(await client.delete(ROOM), 405)
    assert error["code"] == "method_not_allowed"
    await error_of(await client.post("/api/rooms/general/events"), 405)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=abc",
        "before=yesterday",
        "before=1-2-3",
        "before=123",  # (Redis would read 123-0; the id of a message has both parts)
        "before=99999999999999999999",
        "before=18446744073709551616-0",
    ],
)
async def test_bad_history_queries_get_400(client: Any, query: str) -> None:
    await error_of(await client.get(f"{ROOM}?{query}"), 400)


async def test_rate_limit_answers_429_with_retry_after(make_app: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(await make_app(rate_limit_per_s=1, rate_limit_burst=3))
    statuses = [(await client.post(ROOM, json={"text": str(i)})).status for i in range(5)]
    assert statuses[:3] == [201, 201, 201]
    resp = await client.post(ROOM, json={"text": "again"})
    error = await error_of(resp, 429)
    assert error["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    # The limit is per user: another browser is not affected.
    other = await aiohttp_client(client.server)
    assert (await other.post(ROOM, json={"text": "me too"})).status == 201


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        # Malformed: refused as any origin that is not the server's.
        "http://[",
        "http://[::1",
        "http://[evil]",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:x",
        "http://[::1]:x",
        "http://\u00fc",
        "http://127.0.0.1/path",
    ],
)
async def test_cross_site_writes_get_403(client: Any, origin: str) -> None:
    headers = {"Origin": origin}
    await error_of(await client.post(ROOM, json={"text": "x"}, headers=headers), 403)
    await error_of(await client.put("/api/session", json={"name": "x"}, headers=headers), 403)
    resp = await client.get(
        "/api/rooms/general/ws",
        headers={**headers, "Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
    )  # fmt: skip
    await error_of(resp, 403)
    assert (await (await client.get(ROOM)).json())["messages"] == []


MALFORMED_HOSTS = [
    "[::1",
    "[evil]",
    "]",
    "[::1]]",
    "[[::1]",
    "a:99999",
    "a:",
    "[::1]:x",
    "127.0.0.1:8080:80",
    "a b",
    "user@127.0.0.1",
    "127.0.0.1/x",
    "\u00fcber.example",
]


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
async def test_a_malformed_host_is_a_400_on_every_path(client: Any, host: str) -> None:
    headers = {"Host": host}
    for method, path in (
        ("GET", "/"),
        ("GET", "/api/session"),
        ("PUT", "/api/session"),
        ("GET", ROOM),
        ("POST", ROOM),
        ("GET", "/api/rooms/general/events"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ):
        resp = await client.request(method, path, json={"text": "x"}, headers=headers)
        assert (await error_of(resp, 400))["code"] == "bad_host", (method, path)
    assert (await (await client.get(ROOM)).json())["messages"] == []


async def test_an_empty_host_names_no_site(client: Any) -> None:
    headers = {"Host": ""}
    assert (await error_of(await client.get("/", headers=headers), 400))["code"] == "unknown_host"
    assert (await client.get("/healthz", headers=headers)).status == 200


async def test_same_origin_and_allowed_origins_may_post(make_app: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(await make_app(allowed_origins=("https://chat.example.com",)))
    own = f"http://{client.host}:{client.port}"
    for origin in (own, "https://chat.example.com"):
        resp = await client.post(ROOM, json={"text": "x"}, headers={"Origin": origin})
        assert resp.status == 201, origin


async def test_healthz_reports_worker_and_pid(client: Any) -> None:
    import os

    body = await (await client.get("/healthz")).json()
    assert body["status"] == "ok" and body["worker"] == 0 and body["pid"] == os.getpid()


async def test_page_and_static_files_are_served(client: Any) -> None:
    for path in ("/", "/rooms/lobby"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html"
        assert '<script type="module" src="/static/js/main.js">' in await resp.text()
        # No inline script anywhere, so the policy forbids it.
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for script in ("main", "connection", "messages", "rooms", "typing"):
        resp = await client.get(f"/static/js/{script}.js")
        # A module script is refused unless it comes with a JavaScript type.
        assert resp.status == 200
        assert resp.content_type in ("text/javascript", "application/javascript")
    assert (await client.get("/favicon.ico")).status == 200


async def test_streams_carry_the_worker_headers_but_not_the_document_policy(client: Any) -> None:
    async with client.get("/api/rooms/general/events") as resp:
        assert resp.status == 200 and resp.headers["X-Chat-Worker"] == "0"
        assert "Content-Security-Policy" not in resp.headers
    async with client.ws_connect("/api/rooms/general/ws") as ws:
        headers = ws._response.headers
        assert headers["X-Chat-Worker"] == "0" and "Content-Security-Policy" not in headers
    resp = await client.get("/api/session")
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


async def test_clients_without_a_cookie_share_a_rate_limit_per_address(
    make_app: Any, aiohttp_client: Any
) -> None:
    """Each cookie-less request gets a fresh session: it must not get a fresh budget too."""
    app = await make_app(address_rate_limit_per_s=1, address_rate_limit_burst=3)
    client = await aiohttp_client(app)
    statuses = []
    for i in range(5):
        client.session.cookie_jar.clear()
        statuses.append((await client.post(ROOM, json={"text": str(i)})).status)
    assert statuses == [201, 201, 201, 429, 429]
