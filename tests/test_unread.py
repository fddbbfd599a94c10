"""Read positions, unread counts and the caller's rooms: counted right (others'
messages only, deleted ones left out, "100+" past 100), never moved back,
listed newest first and capped, private rooms the user lost left out, and
refusals that write nothing. In-process apps and a real two-worker server,
real tokens, real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.store.keys import idempotency_record_key, outbox_key
from server.store.read_marks import ROOMS_MAX
from server.web import state as keys

from . import openapi_check
from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of
from .test_refusals import Footprint
from .test_signin import bearer

pytestmark = [pytest.mark.timeout(90), pytest.mark.openapi]

ALICE = bearer(sign(claims(sub="alice", rooms={"team-*": "member"})))
ALICE_WITHOUT_GRANT = bearer(sign(claims(sub="alice")))
BOB = bearer(sign(claims(sub="bob", rooms={"team-*": "member"})))


async def app_client(make_app: Any, aiohttp_client: Any, **config: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"], **config)
    return await aiohttp_client(
        app, server_kwargs={"handler_cancellation": True}, middlewares=openapi_check.middlewares()
    )


async def post(client: Any, room: str, text: str, headers: dict[str, str]) -> dict[str, Any]:
    async with client.post(
        f"/api/rooms/{room}/messages", json={"text": text}, headers=headers
    ) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["message"]  # type: ignore[no-any-return]


async def read(client: Any, room: str, message_id: Any, headers: dict[str, str]) -> Any:
    async with client.put(
        f"/api/rooms/{room}/read", json={"id": message_id}, headers=headers
    ) as resp:
        await resp.read()
        return resp


async def my_rooms(client: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    async with client.get("/api/rooms", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["rooms"]  # type: ignore[no-any-return]


async def unread(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    return {r["room"]: r["unread"] for r in await my_rooms(client, headers)}


@pytest.fixture
async def client(make_app: Any, aiohttp_client: Any) -> Any:
    return await app_client(make_app, aiohttp_client)


async def test_unread_counts_others_messages_and_a_read_mark_resets_them_never_back(
    client: Any,
) -> None:
    mine = await post(client, "general", "hello", ALICE)
    assert await my_rooms(client, ALICE) == [{"room": "general", "last_message": mine, "unread": 0}]
    bobs = [await post(client, "general", f"bob {n}", BOB) for n in range(3)]
    assert await my_rooms(client, ALICE) == [
        {"room": "general", "last_message": bobs[-1], "unread": 3}
    ]
    # Her own message marks the room read up to it, and is not counted.
    mine = await post(client, "general", "hi bob", ALICE)
    assert await unread(client, ALICE) == {"general": 0}
    bobs = [await post(client, "general", f"bob again {n}", BOB) for n in range(2)]
    assert await unread(client, ALICE) == {"general": 2}
    resp = await read(client, "general", bobs[0]["id"], ALICE)
    assert resp.status == 200
    assert await resp.json() == {"room": "general", "read": bobs[0]["id"]}
    assert await unread(client, ALICE) == {"general": 1}
    # An older id changes nothing: the position kept is answered.
    for older in (mine["id"], "1-0", "0-0"):
        resp = await read(client, "general", older, ALICE)
        assert resp.status == 200
        assert (await resp.json())["read"] == bobs[0]["id"]
    assert await unread(client, ALICE) == {"general": 1}
    # An id past the newest message is taken as the newest.
    resp = await read(client, "general", "99999999999999-5", ALICE)
    assert (await resp.json())["read"] == bobs[1]["id"]
    assert await unread(client, ALICE) == {"general": 0}
    # Bob's own list counts Alice's messages, not his.
    assert await unread(client, BOB) == {"general": 0}


@pytest.mark.parametrize("webhooks", [False, True], ids=["plain", "webhooks"])
async def test_a_message_reads_its_room_up_to_it_with_a_key_and_webhook_events_beside(
    make_app: Any, aiohttp_client: Any, redis: Any, webhooks: bool
) -> None:
    # On one Redis the publish script also reads the room up to the message:
    # beside an idempotency record and a webhook event, each in its place.
    hooks = {"webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": "s" * 32}
    client = await app_client(make_app, aiohttp_client, **(hooks if webhooks else {}))
    await post(client, "general", "bob 1", BOB)
    await post(client, "general", "bob 2", BOB)
    keyed = {**ALICE, "Idempotency-Key": "alice-1"}
    mine = await post(client, "general", "hi bob", keyed)
    assert await unread(client, ALICE) == {"general": 0}
    record = idempotency_record_key("general", "alice", "alice-1")
    assert await redis.type(record) in ("string", b"string")
    bobs = await post(client, "general", "bob 3", BOB)
    # The retry is the same message, stores nothing and moves nothing back.
    async with client.post(
        "/api/rooms/general/messages", json={"text": "hi bob"}, headers=keyed
    ) as resp:
        assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true"
        assert (await resp.json())["message"]["id"] == mine["id"]
    assert await my_rooms(client, ALICE) == [{"room": "general", "last_message": bobs, "unread": 1}]
    events = await redis.xlen(outbox_key("general"))
    assert events == (4 if webhooks else 0)


async def test_messages_the_backend_posts_as_the_user_are_not_unread_to_it(
    make_app: Any, aiohttp_client: Any
) -> None:
    secret = "k" * 40
    client = await app_client(make_app, aiohttp_client, server_api_keys=[f"app:{secret}:publish"])
    await post(client, "general", "hello", ALICE)
    for user_id in ("alice", "bob", "alice"):
        async with client.post(
            "/server/v1/rooms/general/messages",
            json={"text": "from the backend", "user_id": user_id},
            headers={"Authorization": f"Bearer {secret}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
    # (They do not move her read position: only Bob's counts.)
    assert await unread(client, ALICE) == {"general": 1}


async def test_unread_counts_stop_at_100_plus(client: Any) -> None:
    first = await post(client, "general", "start", ALICE)
    bobs = [await post(client, "general", f"m{n}", BOB) for n in range(120)]
    assert await unread(client, ALICE) == {"general": "100+"}
    assert (await read(client, "general", bobs[19]["id"], ALICE)).status == 200
    assert await unread(client, ALICE) == {"general": 100}
    # (Back is never back: it stays at 100, not 101.)
    assert (await read(client, "general", first["id"], ALICE)).status == 200
    assert await unread(client, ALICE) == {"general": 100}
    assert (await read(client, "general", bobs[18]["id"], BOB)).status == 200
    assert await unread(client, BOB) == {"general": 0}


async def test_last_message_has_the_latest_text_and_deleted_messages_do_not_count(
    client: Any,
) -> None:
    await post(client, "general", "hello", ALICE)
    kept = await post(client, "general", "typo", BOB)
    gone = [await post(client, "general", f"spam {n}", BOB) for n in range(3)]
    async with client.patch(
        f"/api/rooms/general/messages/{kept['id']}", json={"text": "fixed"}, headers=BOB
    ) as resp:
        assert resp.status == 200
        edited = (await resp.json())["message"]
    assert await unread(client, ALICE) == {"general": 4}
    for message in gone:
        async with client.delete(
            f"/api/rooms/general/messages/{message['id']}", headers=BOB
        ) as resp:
            assert resp.status == 204
    rooms = await my_rooms(client, ALICE)
    assert rooms == [{"room": "general", "last_message": edited, "unread": 1}]
    assert rooms[0]["last_message"]["text"] == "fixed"


async def test_rooms_come_newest_first_and_only_the_latest_100(
    client: Any, redis: aioredis.Redis
) -> None:
    names = [f"r{n:03d}" for n in range(ROOMS_MAX + 5)]
    for name in names:
        await post(client, name, "here", ALICE)
    listed = [r["room"] for r in await my_rooms(client, ALICE)]
    assert listed == names[::-1][:ROOMS_MAX]
    # A message by someone else moves its room first; so does her own read.
    await post(client, "r010", "news", BOB)
    listed = [r["room"] for r in await my_rooms(client, ALICE)]
    assert listed[:2] == ["r010", names[-1]] and len(listed) == ROOMS_MAX
    newest = await post(client, "r050", "more", BOB)
    await post(client, "r060", "and more", BOB)
    assert (await read(client, "r050", newest["id"], ALICE)).status == 200
    listed = [r["room"] for r in await my_rooms(client, ALICE)]
    assert listed[:3] == ["r050", "r060", "r010"]
    # A new room pushes the least recent one out.
    await post(client, "extra", "one more", ALICE)
    listed = [r["room"] for r in await my_rooms(client, ALICE)]
    assert listed[0] == "extra" and len(listed) == ROOMS_MAX
    assert names[5] not in listed
    # What Redis keeps is capped too, and expires.
    assert await redis.zcard("chat:user:{alice}:rooms") == ROOMS_MAX
    assert await redis.hlen("chat:user:{alice}:read") == ROOMS_MAX
    assert "r005" not in await redis.hkeys("chat:user:{alice}:read")
    for key in ("chat:user:{alice}:rooms", "chat:user:{alice}:read"):
        assert 0 < await redis.ttl(key) <= 2592000


async def test_private_rooms_the_user_lost_are_left_out(client: Any) -> None:
    await post(client, "team-a", "inside", ALICE)
    await post(client, "general", "outside", ALICE)
    await post(client, "team-a", "news", BOB)
    assert await unread(client, ALICE) == {"team-a": 1, "general": 0}
    assert await unread(client, ALICE_WITHOUT_GRANT) == {"general": 0}
    error = await error_of(await read(client, "team-a", "1-0", ALICE_WITHOUT_GRANT), 404)
    assert error["code"] == "not_found"
    # A membership through the server API gives the room back.
    await client.app[keys.MODERATION].grant("team-a", "alice", "member")
    assert await unread(client, ALICE_WITHOUT_GRANT) == {"team-a": 1, "general": 0}


async def test_a_stranger_has_no_rooms_and_gets_no_session(client: Any, redis: Any) -> None:
    before = await Footprint.of(redis)
    async with client.get("/api/rooms") as resp:
        assert resp.status == 200
        assert await resp.json() == {"rooms": []}
        assert "Set-Cookie" not in resp.headers
    (await Footprint.of(redis)).assert_same_as(before)
    # An anonymous user with a session has rooms like anyone.
    message = await post(client, "general", "anonymous hello", {})
    assert await my_rooms(client, {}) == [{"room": "general", "last_message": message, "unread": 0}]


async def test_anonymous_none_needs_sign_in(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client, anonymous="none")
    message = await post(client, "general", "signed in", ALICE)
    async with client.get("/api/rooms") as resp:
        assert (await error_of(resp, 401))["code"] == "unauthorized"
    await error_of(await read(client, "general", message["id"], {}), 401)
    assert await unread(client, ALICE) == {"general": 0}


async def test_bad_read_marks_are_refused_and_write_nothing(
    client: Any, redis: aioredis.Redis
) -> None:
    message = await post(client, "general", "hello", BOB)
    before = await Footprint.of(redis)
    for bad in ("abc", "1-x", "1-99999999999999999999999", "", 42, None, ["1-0"]):
        await error_of(await read(client, "general", bad, ALICE), 400)
    for body in (b"{not json", b"[]", b'"1-0"', b"\xff"):
        async with client.put("/api/rooms/general/read", data=body, headers=ALICE) as resp:
            await error_of(resp, 400)
    form = {**ALICE, "Content-Type": "application/x-www-form-urlencoded"}
    async with client.put("/api/rooms/general/read", data=b"id=1-0", headers=form) as resp:
        await error_of(resp, 415)
    for room in ("No!", "-x", "a" * 33):
        await error_of(await read(client, room, message["id"], ALICE), 404)
    # A room never used, and a private room without access: the same 404.
    for room in ("never-used", "team-secret"):
        await error_of(await read(client, room, message["id"], ALICE_WITHOUT_GRANT), 404)
    cross_site = {**ALICE, "Origin": "https://evil.example"}
    await error_of(await read(client, "general", message["id"], cross_site), 403)
    (await Footprint.of(redis)).assert_same_as(before)
    assert await unread(client, ALICE) == {}


async def test_read_marks_have_a_budget_and_refused_ones_write_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, rate_limit_per_s=0.01, rate_limit_burst=3)
    message = await post(client, "general", "hello", BOB)
    for _ in range(3):
        assert (await read(client, "general", "1-0", ALICE)).status == 200
    before = await Footprint.of(redis)
    resp = await read(client, "general", message["id"], ALICE)
    assert (await error_of(resp, 429))["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    (await Footprint.of(redis)).assert_same_as(before)
    # Marking read spends its own budget, not the one messages come out of.
    await post(client, "general", "still posting", ALICE)


@pytest.mark.processes
async def test_unread_counts_across_two_workers(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET})
    async with aiohttp.ClientSession(server.url) as session:
        await post(session, "general", "hello", ALICE)
        bobs = [await post(session, "general", f"bob {n}", BOB) for n in range(5)]
        for _ in range(6):  # (new connections: either worker may answer)
            async with session.get("/api/rooms", headers={**ALICE, "Connection": "close"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["rooms"] == [
                    {"room": "general", "last_message": bobs[-1], "unread": 5}
                ]
        assert (await read(session, "general", bobs[2]["id"], ALICE)).status == 200
        assert await unread(session, ALICE) == {"general": 2}
