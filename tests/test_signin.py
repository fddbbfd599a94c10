"""Sign-in with the application's tokens on requests, in-process: the app's
verifier, Bearer tokens for programs, the browser's sign-in, and what
anonymous callers may do. Real tokens (tests/signing.py), real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.web import state as keys
from server.web.tokens import TokenVerifier

from .openapi_check import client_session
from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of, sse_collector
from .test_refusals import Footprint

pytestmark = pytest.mark.openapi


async def signed_in_client(make_app: Any, aiohttp_client: Any, **settings: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, **settings)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def test_the_app_verifies_tokens_with_the_configured_key_while_it_runs(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    verifier = client.app[keys.SIGN_IN].verifier
    assert isinstance(verifier, TokenVerifier)
    assert (await verifier.verify(sign(claims()))).user_id == "alice"
    await client.close()
    assert client.app[keys.SIGN_IN].verifier is None


async def test_without_a_key_source_the_app_has_no_verifier(client: Any) -> None:
    assert client.app[keys.SIGN_IN].verifier is None
    assert (await client.get("/api/session")).status == 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ALICE = bearer(sign(claims(name="Alice Smith")))
EVERY_API = [
    ("GET", "/api/session"),
    ("PUT", "/api/session"),
    ("GET", "/api/rooms/lobby/messages"),
    ("POST", "/api/rooms/lobby/messages"),
    ("GET", "/api/rooms/lobby/online"),
    ("GET", "/api/rooms/lobby/events"),
    ("GET", "/api/rooms/lobby/ws"),
]


async def test_a_bearer_token_is_the_caller_with_no_cookie_and_no_session(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    resp = await client.get("/api/session", headers=ALICE)
    me = await resp.json()
    assert (me["user_id"], me["name"], me["signed_in"]) == ("alice", "Alice Smith", True)
    assert "Set-Cookie" not in resp.headers
    (await Footprint.of(redis)).assert_same_as(before)
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "hi"}, headers=ALICE)
    assert resp.status == 201 and "Set-Cookie" not in resp.headers
    message = (await resp.json())["message"]
    assert (message["user_id"], message["name"]) == ("alice", "Alice Smith")
    assert not [key async for key in redis.scan_iter("*session*")]
    # Without a name in the token: a friendly one, kept for the user.
    bob = bearer(sign(claims(sub="bob@example.com")))
    first = await (await client.get("/api/session", headers=bob)).json()
    assert first["user_id"] == "bob@example.com" and first["name"]
    assert await (await client.get("/api/session", headers=bob)).json() == first
    # A token's name is the user's: it is not renamed.
    resp = await client.put("/api/session", json={"name": "Eve"}, headers=ALICE)
    assert (await error_of(resp, 403))["code"] == "forbidden"
    resp = await client.put("/api/session", json={"name": "Bobby"}, headers=bob)
    assert await resp.json() == {"user_id": "bob@example.com", "name": "Bobby"}


async def test_streams_take_a_bearer_token_and_show_its_name(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    url = "/api/rooms/lobby"
    async with sse_collector(client, f"{url}/events", headers=ALICE) as events:
        alice = {"user_id": "alice", "name": "Alice Smith"}
        await events.wait_for(lambda c: bool(c.presence) and alice in c.presence[-1])
        async with client.ws_connect(f"{url}/ws", headers=bearer(sign(claims(sub="bob")))) as ws:
            await ws.send_json({"type": "message", "text": "from bob", "ref": 1})
            while (frame := await ws.receive_json(timeout=5))["type"] != "ack":
                pass
            assert frame["message"]["user_id"] == "bob"
        await events.wait_for(lambda c: any(m["user_id"] == "bob" for m in c.messages))


async def test_the_online_list_pages_after_a_signed_in_users_id(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    url = "/api/rooms/lobby"
    carol = bearer(sign(claims(sub="carol")))
    async with (
        sse_collector(client, f"{url}/events", headers=ALICE) as events,
        client.get(f"{url}/events", headers=carol) as stream,
    ):
        assert stream.status == 200
        await events.wait_for(lambda c: bool(c.presence) and len(c.presence[-1]) == 2)
        resp = await client.get(f"{url}/online?after=alice", headers=ALICE)
        assert resp.status == 200, await resp.text()
        assert [u["user_id"] for u in (await resp.json())["online"]] == ["carol"]
        resp = await client.get(f"{url}/online?after=no%20such", headers=ALICE)
        assert resp.status == 400


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("not-a-jwt", "invalid_token"),
        (sign(claims(), "RS256"), "invalid_token"),
        (sign(claims(exp=int(time.time()) - 3600)), "token_expired"),
    ],
)
async def test_a_bad_bearer_token_is_refused_on_every_api_path_writing_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis, token: str, code: str
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    for method, path in EVERY_API:
        headers = {**bearer(token), "Connection": "Upgrade", "Upgrade": "websocket"}
        headers |= {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        body = {"text": "hi", "name": "Eve"}
        resp = await client.request(method, path, json=body, headers=headers)
        assert (await error_of(resp, 401))["code"] == code, (method, path)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Set-Cookie" not in resp.headers
    (await Footprint.of(redis)).assert_same_as(before)


async def test_a_token_in_the_query_string_is_not_read(make_app: Any, aiohttp_client: Any) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    token = sign(claims())
    for name in ("token", "access_token", "authorization"):
        me = await (await client.get(f"/api/session?{name}={token}")).json()
        assert me["user_id"].startswith("u-")


def test_tokens_never_reach_the_log(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(
        workers=1, env={"CHAT_AUTH_JWT_SECRET": SECRET, "CHAT_LOG_LEVEL": "debug"}
    )
    good, expired = sign(claims()), sign(claims(exp=int(time.time()) - 3600))

    async def requests() -> None:
        async with client_session() as http:
            for token, status in ((good, 200), (expired, 401), (good + "x", 401)):
                async with http.get(f"{server.url}/api/session", headers=bearer(token)) as resp:
                    assert resp.status == status
            # (The access log is written once the response went out.)
            async with http.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200

    asyncio.run(requests())
    log = server.log()
    assert "/api/session" in log  # the access log is on
    signature = good.rsplit(".", 1)[1]
    assert signature not in log and expired.rsplit(".", 1)[1] not in log


def session_key(client: Any) -> str | None:
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/")).get("chat_session")
    return None if cookie is None or not cookie.value else str(cookie.value.rsplit(".", 1)[0])


async def test_a_browser_signs_in_with_a_token_and_its_session_keeps_no_token(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    anonymous = await (await client.get("/api/session")).json()
    before = session_key(client)
    exp = int(time.time()) + 600
    token = sign(claims(exp=exp, name="Alice Smith", rooms={"team-*": "member"}))
    resp = await client.post("/api/auth", json={"token": token})
    assert await resp.json() == {"user_id": "alice", "name": "Alice Smith", "expires_at": exp}
    key = session_key(client)
    assert key is not None and key != before  # a new session, not the anonymous one's key
    assert "alice" not in resp.cookies["chat_session"].value
    stored = str(await redis.get(f"chat_session_{key}"))
    assert token not in stored and token.rsplit(".", 1)[1] not in stored
    assert "team-*" in stored and str(exp) in stored
    # The cookie alone is alice now, on every path.
    me = await (await client.get("/api/session")).json()
    assert (me["user_id"], me["name"], me["expires_at"]) == ("alice", "Alice Smith", exp)
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "hi"})
    assert (await resp.json())["message"]["user_id"] == "alice"
    assert anonymous["user_id"].startswith("u-")
    # A newer token refreshes the same session.
    later = exp + 600
    resp = await client.post("/api/auth", json={"token": sign(claims(exp=later, name="Al"))})
    assert await resp.json() == {"user_id": "alice", "name": "Al", "expires_at": later}
    assert session_key(client) == key
    assert (await (await client.get("/api/session")).json())["name"] == "Al"


async def test_a_signed_in_session_ends_with_its_token(make_app: Any, aiohttp_client: Any) -> None:
    client = await signed_in_client(make_app, aiohttp_client, auth_leeway_s=0)
    exp = time.time() + 1
    resp = await client.post("/api/auth", json={"token": sign(claims(exp=exp))})
    assert resp.status == 200
    assert (await (await client.get("/api/session")).json())["user_id"] == "alice"
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.1)  # (until the clock passes exp)
    resp = await client.get("/api/session")
    assert (await error_of(resp, 401))["code"] == "token_expired"
    resp = await client.post("/api/auth", json={"token": sign(claims())})
    assert resp.status == 200
    assert (await (await client.get("/api/session")).json())["user_id"] == "alice"


async def test_signing_out_deletes_the_session(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    assert (await client.post("/api/auth", json={"token": sign(claims())})).status == 200
    key = session_key(client)
    assert await redis.exists(f"chat_session_{key}")
    resp = await client.delete("/api/auth")
    assert resp.status == 204
    assert session_key(client) is None
    assert not await redis.exists(f"chat_session_{key}")
    me = await (await client.get("/api/session")).json()
    assert me["user_id"].startswith("u-")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"token": "not-a-jwt"}, 401, "invalid_token"),
        ({"token": sign(claims(exp=int(time.time()) - 3600))}, 401, "token_expired"),
        ({"token": sign(claims(), "ES256")}, 401, "invalid_token"),
        ({}, 400, "bad_request"),
        ({"token": 42}, 400, "bad_request"),
    ],
)
async def test_a_refused_sign_in_writes_nothing(
    make_app: Any,
    aiohttp_client: Any,
    redis: aioredis.Redis,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    resp = await client.post("/api/auth", json=body)
    assert (await error_of(resp, status))["code"] == code
    assert "Set-Cookie" not in resp.headers
    (await Footprint.of(redis)).assert_same_as(before)


async def test_without_a_key_source_no_token_signs_in(client: Any) -> None:
    resp = await client.post("/api/auth", json={"token": sign(claims())})
    assert (await error_of(resp, 401))["code"] == "invalid_token"
