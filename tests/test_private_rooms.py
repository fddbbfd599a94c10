"""Private rooms and roles: a private room exists only for callers with a
grant for it, and a reader reads but does not post. In-process, real
tokens, real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import error_of, sse_collector
from .test_anonymous import UPGRADE
from .test_refusals import Footprint
from .test_signin import bearer

pytestmark = pytest.mark.openapi

MEMBER = bearer(sign(claims(sub="alice", rooms={"team-a": "member"})))
READER = bearer(sign(claims(sub="bob", rooms={"team-*": "reader", "lobby": "reader"})))
STRANGER = bearer(sign(claims(sub="carol", rooms={"other-*": "moderator"})))
PATHS = [
    ("GET", "/api/rooms/team-a/messages"),
    ("POST", "/api/rooms/team-a/messages"),
    ("GET", "/api/rooms/team-a/online"),
    ("GET", "/api/rooms/team-a/events"),
    ("GET", "/api/rooms/team-a/ws"),
]


async def app_client(make_app: Any, aiohttp_client: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"])
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def answers(client: Any, headers: dict[str, str]) -> list[tuple[int, Any]]:
    found = []
    for method, path in PATHS:
        resp = await client.request(method, path, json={"text": "hi"}, headers=headers | UPGRADE)
        found.append((resp.status, await resp.json()))
        assert "Set-Cookie" not in resp.headers
    return found


async def test_a_private_room_does_not_exist_for_callers_without_a_grant(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    unused = await answers(client, {})
    assert {status for status, _ in unused} == {404}
    assert {body["error"]["code"] for _, body in unused} == {"not_found"}
    resp = await client.post("/api/rooms/team-a/messages", json={"text": "x"}, headers=MEMBER)
    assert resp.status == 201
    before = await Footprint.of(redis)
    # Used now: the same answers, to anonymous callers and to other users.
    assert await answers(client, {}) == unused
    assert await answers(client, STRANGER) == unused
    (await Footprint.of(redis)).assert_same_as(before)
    # A public room is there for everyone.
    assert (await client.get("/api/rooms/lobby/messages")).status == 200


async def test_a_reader_reads_and_a_member_posts(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    url = "/api/rooms/team-a"
    async with sse_collector(client, f"{url}/events", headers=READER) as events:
        resp = await client.post(f"{url}/messages", json={"text": "hello"}, headers=MEMBER)
        assert resp.status == 201
        await events.wait_for(lambda c: [m["text"] for m in c.messages] == ["hello"])
        history = await (await client.get(f"{url}/messages", headers=READER)).json()
        assert [m["text"] for m in history["messages"]] == ["hello"]
        assert (await client.get(f"{url}/online", headers=READER)).status == 200
        before = await Footprint.of(redis)
        for room in ("team-a", "lobby"):  # a grant decides in a public room too
            resp = await client.post(
                f"/api/rooms/{room}/messages", json={"text": "no"}, headers=READER
            )
            assert (await error_of(resp, 403))["code"] == "forbidden"
        (await Footprint.of(redis)).assert_same_as(before)
        async with client.ws_connect(f"{url}/ws", headers=READER) as ws:
            await ws.send_json({"type": "message", "text": "no", "ref": 1})
            while (frame := await ws.receive_json(timeout=5))["type"] not in ("ack", "error"):
                pass
            assert frame["error"]["code"] == "forbidden"
        async with client.ws_connect(f"{url}/ws", headers=MEMBER) as ws:
            await ws.send_json({"type": "message", "text": "by ws", "ref": 2})
            while (frame := await ws.receive_json(timeout=5))["type"] not in ("ack", "error"):
                pass
            assert frame["type"] == "ack"
        await events.wait_for(lambda c: [m["text"] for m in c.messages] == ["hello", "by ws"])


async def test_a_signed_in_session_keeps_its_grants(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client)
    assert (await client.get("/api/rooms/team-a/messages")).status == 404
    token = sign(claims(rooms={"team-a": "member"}))
    assert (await client.post("/api/auth", json={"token": token})).status == 200
    resp = await client.post("/api/rooms/team-a/messages", json={"text": "from the page"})
    assert resp.status == 201
    assert (await client.get("/api/rooms/team-a/messages")).status == 200
    assert (await client.get("/api/rooms/team-b/messages")).status == 404


async def test_the_session_says_the_callers_role_in_the_room_asked(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    moderator = bearer(sign(claims(sub="mod", rooms={"lobby": "moderator"})))

    async def role(room: str, headers: dict[str, str]) -> Any:
        resp = await client.get("/api/session", params={"room": room}, headers=headers)
        assert resp.status == 200
        return (await resp.json())["role"]

    # Without a room, the answer is as it was: no role in it.
    assert "role" not in await (await client.get("/api/session", headers=MEMBER)).json()
    assert [await role("lobby", who) for who in ({}, MEMBER, READER, moderator)] == [
        "member",
        "member",
        "reader",
        "moderator",
    ]
    # A private room: the grant's role, or null where it does not exist for the caller.
    assert [await role("team-a", who) for who in ({}, MEMBER, READER, STRANGER)] == [
        None,
        "member",
        "reader",
        None,
    ]
    # A membership the backend grants (and changes) is the role from the next ask.
    moderation = client.app[keys.MODERATION]
    await moderation.grant("team-b", "carol", "member")
    assert await role("team-b", STRANGER) == "member"
    await moderation.grant("team-b", "carol", "moderator")
    assert await role("team-b", STRANGER) == "moderator"
    # A session signed in with a token keeps its grants.
    token = sign(claims(sub="mod", rooms={"lobby": "moderator"}))
    assert (await client.post("/api/auth", json={"token": token})).status == 200
    assert await role("lobby", {}) == "moderator"
    # Not a room name: 400, and nothing written.
    before = await Footprint.of(redis)
    for bad in ("Lobby", "", "a" * 33, "../x"):
        resp = await client.get("/api/session", params={"room": bad}, headers=MEMBER)
        assert (await error_of(resp, 400))["code"] == "bad_request"
    (await Footprint.of(redis)).assert_same_as(before)
