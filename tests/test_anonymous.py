"""What callers without a token may do: ``anonymous = "read"`` reads but
does not write, ``anonymous = "none"`` needs sign-in for all but the page,
``/healthz``, ``/metrics`` and ``/api/auth``. In-process, real tokens, real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from .signing import SECRET, claims, sign
from .support import error_of, sse_collector
from .test_refusals import Footprint
from .test_signin import EVERY_API, bearer

pytestmark = pytest.mark.openapi

ALICE = bearer(sign(claims(name="Alice")))
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def app_client(make_app: Any, aiohttp_client: Any, anonymous: str) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, anonymous=anonymous)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def test_read_lets_anonymous_callers_read_but_not_write(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, "read")
    me = await (await client.get("/api/session")).json()
    assert me["user_id"].startswith("u-")
    posted = await client.post("/api/rooms/lobby/messages", json={"text": "hi"}, headers=ALICE)
    assert posted.status == 201  # signed in: a member
    history = await (await client.get("/api/rooms/lobby/messages")).json()
    assert [m["text"] for m in history["messages"]] == ["hi"]
    assert (await client.get("/api/rooms/lobby/online")).status == 200
    before = await Footprint.of(redis)
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "anon"})
    assert (await error_of(resp, 403))["code"] == "forbidden"
    resp = await client.put("/api/session", json={"name": "Eve"})
    assert (await error_of(resp, 403))["code"] == "forbidden"
    (await Footprint.of(redis)).assert_same_as(before)
    async with sse_collector(client, "/api/rooms/lobby/events") as events:
        await events.wait_for(lambda c: bool(c.presence))
    async with client.ws_connect("/api/rooms/lobby/ws") as ws:
        await ws.send_json({"type": "message", "text": "anon", "ref": "r"})
        while (frame := await ws.receive_json(timeout=5))["type"] not in ("ack", "error"):
            pass
        assert frame["type"] == "error" and frame["error"]["code"] == "forbidden"
    history = await (await client.get("/api/rooms/lobby/messages")).json()
    assert [m["text"] for m in history["messages"]] == ["hi"]


async def test_none_needs_sign_in_for_everything_but_the_page_health_metrics_and_auth(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, "none")
    for path in ("/", "/rooms/lobby", "/healthz", "/metrics"):
        assert (await client.get(path)).status == 200, path
    before = await Footprint.of(redis)
    for method, path in EVERY_API:
        body = {"text": "hi", "name": "Eve"}
        resp = await client.request(method, path, json=body, headers=UPGRADE)
        assert (await error_of(resp, 401))["code"] == "unauthorized", (method, path)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert "Set-Cookie" not in resp.headers
    (await Footprint.of(redis)).assert_same_as(before)
    # Signed in, with a token or through the session: as ever.
    me = await (await client.get("/api/session", headers=ALICE)).json()
    assert (me["user_id"], me["name"], me["signed_in"]) == ("alice", "Alice", True)
    assert (await client.get("/api/rooms/lobby/messages", headers=ALICE)).status == 200
    assert (await client.post("/api/auth", json={"token": sign(claims(sub="bob"))})).status == 200
    assert (await (await client.get("/api/session")).json())["user_id"] == "bob"
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "from bob"})
    assert resp.status == 201
    assert (await client.get("/api/rooms/lobby/online")).status == 200
    assert (await client.delete("/api/auth")).status == 204
    resp = await client.get("/api/rooms/lobby/messages")
    assert (await error_of(resp, 401))["code"] == "unauthorized"
