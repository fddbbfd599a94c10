"""The server API (``/server/v1/``): keys and scopes, every route, its refusals;
then real servers of two workers: fan-out, broadcasts, listing 1,000 rooms,
and disconnects and bans that reach every worker within a second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.store.keys import stream_key
from server.store.room_registry import ACTIVE_KEY, NAMES_KEY, RoomRegistry
from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of, metric, subscribe_on_worker
from .test_moderation import LOBBY, all_closed_within, streams_everywhere
from .test_refusals import Footprint
from .test_signin import bearer

PUBLISH = "p" * 40
READ = "r" * 40
MODERATE = "m" * 40
ALL = "a" * 40
KEYS = [
    f"pub:{PUBLISH}:publish",
    f"reader:{READ}:read",
    f"mod:{MODERATE}:moderate",
    f"all:{ALL}:publish,read,moderate",
]
SCOPE_SECRETS = {"publish": PUBLISH, "read": READ, "moderate": MODERATE}
V1 = "/server/v1"

# Every route: method, path, JSON body, scope, the status it answers.
ROUTES: list[tuple[str, str, Any, str, int]] = [
    ("POST", f"{V1}/rooms/lobby/messages", {"text": "hi", "user_id": "alice"}, "publish", 201),
    ("POST", f"{V1}/broadcast", {"rooms": ["lobby", "other"], "text": "hi"}, "publish", 200),
    ("GET", f"{V1}/rooms", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby/messages", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby/online", None, "read", 200),
    ("PUT", f"{V1}/rooms/team-a/members/alice", {"role": "member"}, "moderate", 204),
    ("DELETE", f"{V1}/rooms/team-a/members/alice", None, "moderate", 204),
    ("POST", f"{V1}/users/alice/disconnect", {"reconnect": True}, "moderate", 202),
    ("PUT", f"{V1}/users/alice/ban", {"for_s": 60, "reason": "spam"}, "moderate", 204),
    ("DELETE", f"{V1}/users/alice/ban", None, "moderate", 204),
]


def key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def app_client(make_app: Any, aiohttp_client: Any, **settings: Any) -> Any:
    settings.setdefault("server_api_keys", KEYS)
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"], **settings)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def call(client: Any, method: str, path: str, body: Any, secret: str | None) -> Any:
    headers = key(secret) if secret else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_each_route_answers_a_key_with_its_scope_and_refuses_others_writing_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    for method, path, body, scope, status in ROUTES:
        before = await Footprint.of(redis)
        for secret in (None, "x" * 40, PUBLISH[:-1], f"{PUBLISH} {PUBLISH}"):
            resp = await call(client, method, path, body, secret)
            assert (await error_of(resp, 401))["code"] == "unauthorized", (method, path)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        for other, secret in SCOPE_SECRETS.items():
            if other != scope:
                resp = await call(client, method, path, body, secret)
                error = await error_of(resp, 403)
                assert error["code"] == "scope" and scope in error["message"]
        (await Footprint.of(redis)).assert_same_as(before)
        for secret in (SCOPE_SECRETS[scope], ALL):
            resp = await call(client, method, path, body, secret)
            assert resp.status == status, (method, path, await resp.text())
            assert "Set-Cookie" not in resp.headers
    # What was asked of each route is counted, by its template.
    text = await (await client.get("/metrics")).text()
    sample = 'chat_server_api_requests_total{method="PUT",route="%s",status="%s"}'
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 204)) == 2
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 401)) == 4
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 403)) == 2


async def test_without_a_key_every_path_is_an_unknown_one(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client, server_api_keys=[])
    unknown = await client.get("/no/such/path")
    expected = (unknown.status, await unknown.json())
    for method, path, body, scope, _ in ROUTES:
        resp = await call(client, method, path, body, SCOPE_SECRETS[scope])
        assert (resp.status, await resp.json()) == expected, (method, path)
        assert "Set-Cookie" not in resp.headers


async def test_a_sign_in_token_is_no_server_key_and_a_server_key_no_token(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    token = sign(claims(sub="alice"))
    resp = await client.get(f"{V1}/rooms", headers=bearer(token))
    assert (await error_of(resp, 401))["code"] == "unauthorized"
    resp = await client.get("/api/session", headers=key(READ))
    assert (await error_of(resp, 401))["code"] == "invalid_token"


async def test_the_browsers_cross_site_checks_do_not_apply(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    headers = key(PUBLISH) | {"Origin": "https://elsewhere.example"}
    resp = await client.post(f"{V1}/rooms/lobby/messages", json={"text": "hi"}, headers=headers)
    assert resp.status == 201
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "hi"}, headers=headers)
    assert resp.status == 403


async def test_a_message_is_posted_as_a_user_or_as_the_key_once_per_idempotency_key(
    make_app: Any, aiohttp_client: Any
) -> None:
    # Budgets as tight as can be: the backend has none.
    client = await app_client(
        make_app, aiohttp_client, rate_limit_per_s=0.01, rate_limit_burst=1,
        address_rate_limit_per_s=0.01, address_rate_limit_burst=1, address_rooms_per_min=1,
    )  # fmt: skip
    path = f"{V1}/rooms/lobby/messages"
    sent = []
    for body in ({"text": "one"}, {"text": "two", "user_id": "alice", "name": " Alice  B "}):
        resp = await client.post(path, json=body, headers=key(PUBLISH))
        assert resp.status == 201, await resp.text()
        sent.append((await resp.json())["message"])
    assert [(m["user_id"], m["name"], m["text"]) for m in sent] == [
        ("server:pub", "pub", "one"),
        ("alice", "Alice B", "two"),
    ]
    # The same Idempotency-Key: the first message, once per key and user.
    first = None
    for secret, new in ((PUBLISH, True), (PUBLISH, False), (ALL, True)):
        headers = key(secret) | {"Idempotency-Key": "k-1"}
        resp = await client.post(path, json={"text": "x", "user_id": "bob"}, headers=headers)
        assert resp.status == 201
        message = (await resp.json())["message"]
        assert (resp.headers.get("Idempotent-Replayed") is None) == new
        if secret == PUBLISH:
            first = first or message
            assert message == first
    # A banned user may be posted as by the backend; the history has all.
    await client.put(f"{V1}/users/bob/ban", json={}, headers=key(MODERATE))
    resp = await client.post(path, json={"text": "y", "user_id": "bob"}, headers=key(PUBLISH))
    assert resp.status == 201
    resp = await client.get(f"{path}?limit=200", headers=key(READ))
    assert [m["text"] for m in (await resp.json())["messages"]] == ["one", "two", "x", "x", "y"]


async def test_history_pages_before_and_after_an_id(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client, message_max_chars=10_000)
    path = f"{V1}/rooms/lobby/messages"
    ids = []
    for i in range(30):
        # (Long texts: a page of history holds 10, so 30 take several.)
        text = f"{i}:" + "x" * 9000
        resp = await client.post(path, json={"text": text}, headers=key(PUBLISH))
        ids.append((await resp.json())["message"]["id"])

    async def page(query: str) -> list[str]:
        resp = await client.get(f"{path}?{query}", headers=key(READ))
        assert resp.status == 200, await resp.text()
        return [m["id"] for m in (await resp.json())["messages"]]

    assert await page("limit=25") == ids[5:]
    assert await page(f"before={ids[20]}&limit=15") == ids[5:20]
    assert await page(f"after={ids[2]}&limit=25") == ids[3:28]
    assert await page(f"after={ids[2]}&before={ids[10]}&limit=200") == ids[3:10]
    assert await page(f"after={ids[-1]}") == []
    assert await page("after=0-0&limit=12") == ids[:12]
    assert await page("after=18446744073709551615-18446744073709551615") == []
    assert await page("before=0-0&after=0-0") == []


async def test_the_backend_deletes_any_message_and_history_leaves_it_out(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    path = f"{V1}/rooms/lobby/messages"
    ids = []
    for i in range(12):
        resp = await client.post(
            path, json={"text": f"m{i}", "user_id": "alice"}, headers=key(PUBLISH)
        )
        ids.append((await resp.json())["message"]["id"])
    target = f"{path}/{ids[3]}"
    before = await Footprint.of(redis)
    for secret, status in ((None, 401), (PUBLISH, 403), (READ, 403)):
        assert (await call(client, "DELETE", target, None, secret)).status == status
    for bad, status in ((f"{path}/nonsense", 400), (f"{path}/1-0", 404)):
        assert (await call(client, "DELETE", bad, None, MODERATE)).status == status
    (await Footprint.of(redis)).assert_same_as(before)
    for gone in (ids[3], ids[4], ids[5]):
        resp = await call(client, "DELETE", f"{path}/{gone}", None, MODERATE)
        assert resp.status == 204, await resp.text()
    assert (await call(client, "DELETE", target, None, ALL)).status == 404  # (already)

    async def page(query: str) -> list[str]:
        resp = await client.get(f"{path}?{query}", headers=key(READ))
        assert resp.status == 200, await resp.text()
        return [m["id"] for m in (await resp.json())["messages"]]

    kept = ids[:3] + ids[6:]
    assert await page("limit=9") == kept
    assert await page("limit=5") == kept[-5:]
    assert await page(f"after={ids[1]}&limit=3") == kept[2:5]
    assert await page(f"after={ids[2]}&limit=200") == kept[3:]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "rooms/lobby/messages", b"{not json", 400, "not valid JSON"),
        ("POST", "rooms/lobby/messages", b"[1]", 400, "JSON object"),
        ("POST", "rooms/lobby/messages", b"\xff\xfe", 400, "UTF-8"),
        ("POST", "rooms/lobby/messages", b"", 400, "send a JSON object"),
        ("POST", "rooms/lobby/messages", {"text": 5}, 400, "'text' must be a string"),
        ("POST", "rooms/lobby/messages", {"text": "   "}, 400, "must not be empty"),
        ("POST", "rooms/lobby/messages", {"text": "x" * 2001}, 413, "longer than"),
        ("POST", "rooms/lobby/messages", {"txt": "hi"}, 400, "unknown field 'txt'"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "user_id": 7}, 400, "user id"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "user_id": "a b"}, 400, "user id"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "user_id": "x" * 65}, 400, "user id"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "user_id": "server:pu"}, 400, "keys'"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "name": "a\u202eb"}, 400, "format"),
        ("POST", "rooms/lobby/messages", {"text": "hi", "name": ""}, 400, "name must be"),
        ("POST", "rooms/Lobby/messages", {"text": "hi"}, 404, "no room"),
        ("POST", "rooms/a..b/messages", {"text": "hi"}, 404, "no room"),
        ("POST", "broadcast", {"rooms": [], "text": "hi"}, 400, "1-100 room names"),
        ("POST", "broadcast", {"rooms": "lobby", "text": "hi"}, 400, "1-100 room names"),
        ("POST", "broadcast", {"rooms": ["a"] * 2, "text": "hi"}, 400, "twice"),
        ("POST", "broadcast", {"rooms": ["lobby", "No"], "text": "hi"}, 400, "not a room"),
        ("POST", "broadcast", {"rooms": ["lobby", 5], "text": "hi"}, 400, "a int"),
        ("POST", "broadcast", {"rooms": ["lobby"], "text": ""}, 400, "must not be empty"),
        ("POST", "broadcast", {"rooms": ["lobby"]}, 400, "missing 'text'"),
        ("GET", "rooms?limit=0", None, 400, "'limit'"),
        ("GET", "rooms?limit=501", None, 400, "'limit'"),
        ("GET", "rooms?prefix=A", None, 400, "'prefix'"),
        ("GET", "rooms?cursor=!!", None, 400, "'cursor'"),
        ("GET", "rooms?cursor=QUJD", None, 400, "'cursor'"),
        ("GET", "rooms/lobby/messages?before=x", None, 400, "'before'"),
        ("GET", "rooms/lobby/messages?after=1-", None, 400, "'after'"),
        ("GET", "rooms/lobby/messages?limit=201", None, 400, "'limit'"),
        ("GET", "rooms/lobby/online?after=a%20b", None, 400, "'after'"),
        ("GET", "rooms/nothing-here", None, 404, "no history"),
        ("PUT", "rooms/team-a/members/alice", {"role": "owner"}, 400, "'role'"),
        ("PUT", "rooms/team-a/members/alice", {}, 400, "'role'"),
        ("PUT", "rooms/team-a/members/a%20b", {"role": "member"}, 400, "user id"),
        ("PUT", "rooms/Team/members/alice", {"role": "member"}, 404, "no room"),
        ("POST", "users/alice/disconnect", {"reconnect": "yes"}, 400, "'reconnect'"),
        ("POST", "users/alice/disconnect", {"reconnect": True, "room": "x"}, 400, "unknown"),
        ("PUT", "users/alice/ban", {"for_s": 0}, 400, "'for_s'"),
        ("PUT", "users/alice/ban", {"for_s": True}, 400, "'for_s'"),
        ("PUT", "users/alice/ban", {"for_s": "60"}, 400, "'for_s'"),
        ("PUT", "users/alice/ban", {"rooms": "lobby"}, 400, "'rooms'"),
        ("PUT", "users/alice/ban", {"rooms": {"lobby": 1}}, 400, "'rooms'"),
        ("PUT", "users/alice/ban", {"rooms": []}, 400, "'rooms'"),
        ("PUT", "users/alice/ban", {"reason": 5}, 400, "'reason'"),
        ("PUT", "users/alice/ban", {"reason": "x" * 201}, 400, "'reason'"),
        ("PUT", "users/alice/ban", {"reason": "\ud800"}, 400, "'reason'"),
        ("PUT", "users/alice/ban", {"for": 60}, 400, "unknown field 'for'"),
        ("DELETE", "users/alice/ban", {"rooms": ["Lobby"]}, 400, "'rooms'"),
        ("DELETE", "users/%20/ban", None, 400, "user id"),
    ],
)
async def test_bad_input_is_a_clear_error_and_writes_nothing(
    make_app: Any,
    aiohttp_client: Any,
    redis: aioredis.Redis,
    method: str,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    client = await app_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    kwargs: dict[str, Any] = {"headers": key(ALL)}
    if isinstance(body, bytes):
        kwargs["data"] = body
        kwargs["headers"] |= {"Content-Type": "application/json"}
    elif body is not None:
        kwargs["data"] = json.dumps(body)
        kwargs["headers"] |= {"Content-Type": "application/json"}
    resp = await client.request(method, f"{V1}/{path}", **kwargs)
    error = await error_of(resp, status)
    assert says in error["message"], error
    (await Footprint.of(redis)).assert_same_as(before)


async def test_a_body_that_is_not_json_is_refused(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client)
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        resp = await client.post(
            f"{V1}/rooms/lobby/messages",
            data="text=hi",
            headers=key(PUBLISH) | {"Content-Type": content_type},
        )
        assert (await error_of(resp, 415))["code"] == "unsupported_media_type"
    resp = await client.post(
        f"{V1}/rooms/lobby/messages", json={"text": "x" * 70_000}, headers=key(PUBLISH)
    )
    assert resp.status == 413


async def test_a_room_tells_its_history_presence_and_whether_it_is_private(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    ids = []
    for room in ("team-a", "team-a", "lobby"):
        resp = await client.post(
            f"{V1}/rooms/{room}/messages", json={"text": "hi"}, headers=key(PUBLISH)
        )
        ids.append((await resp.json())["message"]["id"])
    # A membership admits alice to the private room; a reader may not post.
    alice = bearer(sign(claims(sub="alice")))
    assert (await client.get("/api/rooms/team-a/messages", headers=alice)).status == 404
    resp = await client.put(
        f"{V1}/rooms/team-a/members/alice", json={"role": "reader"}, headers=key(MODERATE)
    )
    assert resp.status == 204
    assert (await client.get("/api/rooms/team-a/messages", headers=alice)).status == 200
    resp = await client.post("/api/rooms/team-a/messages", json={"text": "x"}, headers=alice)
    assert resp.status == 403
    async with client.get("/api/rooms/team-a/events", headers=alice) as events:
        assert events.status == 200
        async with asyncio.timeout(10):
            while True:
                resp = await client.get(f"{V1}/rooms/team-a", headers=key(READ))
                room = await resp.json()
                if room["online"]:
                    break
                await asyncio.sleep(0.05)
        assert room == {
            "room": "team-a", "private": True, "last_id": ids[1], "length": 2, "online": 1,
        }  # fmt: skip
        resp = await client.get(f"{V1}/rooms/team-a/online", headers=key(READ))
        assert await resp.json() == {"online": [{"user_id": "alice", "name": "alice"}], "count": 1}
    resp = await client.get(f"{V1}/rooms/lobby", headers=key(READ))
    assert (await resp.json())["private"] is False
    resp = await client.get(f"{V1}/rooms/nobody/online", headers=key(READ))
    assert await resp.json() == {"online": [], "count": 0}
    resp = await client.delete(f"{V1}/rooms/team-a/members/alice", headers=key(MODERATE))
    assert resp.status == 204
    assert (await client.get("/api/rooms/team-a/messages", headers=alice)).status == 404


async def test_the_registry_forgets_rooms_whose_history_expired_and_keeps_the_others(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    for room in ("gone", "kept", "old"):
        resp = await client.post(
            f"{V1}/rooms/{room}/messages", json={"text": "hi"}, headers=key(PUBLISH)
        )
        assert resp.status == 201
    # Silent long enough, as far as the registry knows: one's history is
    # gone, one's lives on (a refresh lost with a worker), one has no expiry.
    await redis.zadd(ACTIVE_KEY, {"gone": 0, "kept": 0, "old": 0})
    await redis.delete(stream_key("gone"))
    await redis.persist(stream_key("old"))
    resp = await client.get(f"{V1}/rooms", headers=key(READ))
    assert [r["room"] for r in (await resp.json())["rooms"]] == ["kept", "old"]
    ttl_s = client.app[keys.CONFIG].room_ttl_s
    assert await RoomRegistry(redis, room_ttl_s=ttl_s).sweep() == 1
    assert await redis.zrange(NAMES_KEY, 0, -1) == ["kept", "old"]
    active = dict(await redis.zrange(ACTIVE_KEY, 0, -1, withscores=True))
    now_ms = time.time() * 1000
    assert abs(active["kept"] - now_ms) < 10_000 and abs(active["old"] - now_ms) < 10_000
    assert await RoomRegistry(redis, room_ttl_s=ttl_s).sweep() == 0
    # Created again: registered again, before its first message.
    resp = await client.post(
        f"{V1}/broadcast", json={"rooms": ["gone"], "text": "hi"}, headers=key(PUBLISH)
    )
    assert "message" in (await resp.json())["results"][0]
    assert await redis.zrange(NAMES_KEY, 0, -1) == ["gone", "kept", "old"]


# Real servers of two workers, with the keys from the environment (comma-separated).


def api_server(start_server: Callable[..., ServerProcess], **env: str) -> ServerProcess:
    settings = {"CHAT_SERVER_API_KEYS": ",".join(KEYS), "CHAT_AUTH_JWT_SECRET": SECRET}
    return start_server(workers=2, env=settings | env)


@pytest.mark.processes
async def test_a_message_posted_through_the_api_reaches_every_worker_and_transport(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = api_server(start_server)
    async with (
        aiohttp.ClientSession(server.url) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = [
            await subscribe_on_worker(stack, http, kind, worker, room=LOBBY)
            for kind in ("sse", "ws")
            for worker in ("0", "1")
        ]
        assert "Set-Cookie" not in (await http.get(f"{V1}/rooms", headers=key(READ))).headers
        posted = []
        for i in range(4):
            sent_ms = time.time() * 1000
            async with http.post(
                f"{V1}/rooms/lobby/messages",
                json={"text": f"notice {i}", "user_id": "alice"},
                headers=key(PUBLISH) | {"Connection": "close"},  # (each to any worker)
            ) as resp:
                assert resp.status == 201, await resp.text()
                assert "Set-Cookie" not in resp.headers
                posted.append((await resp.json())["message"])
        for stream in streams:
            await stream.wait_for(lambda s: len(s.messages) >= 4)
            assert stream.messages == posted
        # The room's activity is written by the heartbeat of the worker that stored it.
        async with asyncio.timeout(5):
            while (await redis.zscore(ACTIVE_KEY, "lobby") or 0) < sent_ms:
                await asyncio.sleep(0.05)
        assert http.cookie_jar.filter_cookies(http._base_url) == {}  # type: ignore[arg-type]
        text = await (await http.get("/metrics")).text()
        sample = 'chat_server_api_requests_total{method="POST",route="%s",status="201"}'
        assert metric(text, sample % "/server/v1/rooms/{room}/messages") == 4


@pytest.mark.processes
async def test_a_broadcast_reaches_100_rooms_and_101_are_refused(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = api_server(start_server)
    rooms = [f"room-{i:03}" for i in range(101)]
    async with (
        aiohttp.ClientSession(server.url, headers=key(PUBLISH)) as http,
        aiohttp.ClientSession(server.url) as browser,
    ):
        async with contextlib.AsyncExitStack() as stack:
            listener = await subscribe_on_worker(
                stack, browser, "ws", "1", room="/api/rooms/room-099"
            )
            resp = await http.post(f"{V1}/broadcast", json={"rooms": rooms[:100], "text": "hi"})
            assert resp.status == 200, await resp.text()
            results = (await resp.json())["results"]
            assert [r["room"] for r in results] == rooms[:100]
            assert all(r["message"]["text"] == "hi" for r in results)
            assert [r["message"]["user_id"] for r in results] == ["server:pub"] * 100
            await listener.wait_for(lambda s: s.messages == [results[99]["message"]])
        for room in rooms[:100]:
            assert await redis.xlen(stream_key(room)) == 1
        before = await Footprint.of(redis)
        for count in (101, 0):
            resp = await http.post(f"{V1}/broadcast", json={"rooms": rooms[:count], "text": "x"})
            assert (await error_of(resp, 400))["code"] == "bad_request"
        (await Footprint.of(redis)).assert_same_as(before)
        # Retried with its idempotency key: nothing new, the first messages.
        for _ in range(2):
            resp = await http.post(
                f"{V1}/broadcast",
                json={"rooms": rooms[:3], "text": "once"},
                headers={"Idempotency-Key": "b-1"},
            )
            assert resp.status == 200
            again = (await resp.json())["results"]
            assert all(r["message"]["text"] == "once" for r in again)
        assert await redis.xlen(stream_key(rooms[0])) == 2


@pytest.mark.processes
async def test_the_room_list_pages_through_a_thousand_rooms_with_none_twice_or_missed(
    start_server: Callable[..., ServerProcess], redis: aioredis.Redis
) -> None:
    server = api_server(start_server)
    rooms = sorted(f"{kind}-{i:03}" for kind in ("blue", "green") for i in range(500))
    async with aiohttp.ClientSession(server.url, headers=key(ALL)) as http:
        for start in range(0, len(rooms), 100):
            resp = await http.post(
                f"{V1}/broadcast", json={"rooms": rooms[start : start + 100], "text": "hi"}
            )
            assert resp.status == 200

        async def listing(query: str) -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            cursor = None
            async with asyncio.timeout(30):
                while True:
                    more = f"&cursor={cursor}" if cursor else ""
                    resp = await http.get(f"{V1}/rooms?{query}{more}")
                    assert resp.status == 200, await resp.text()
                    page = await resp.json()
                    seen += page["rooms"]
                    cursor = page["cursor"]
                    if cursor is None:
                        return seen

        everything = await listing("limit=37")
        assert [r["room"] for r in everything] == rooms
        assert all(r["online"] == 0 and r["last_id"] for r in everything)
        green = await listing("prefix=green-&limit=500")
        assert [r["room"] for r in green] == rooms[500:]
        assert [r["room"] for r in await listing("prefix=blue-04&limit=3")] == [
            f"blue-{i:03}" for i in range(40, 50)
        ]
        assert await listing("prefix=red") == []
        # A room whose history is gone is left out, before any sweep.
        await redis.delete(stream_key("blue-000"))
        assert [r["room"] for r in await listing("limit=500")] == rooms[1:]


@pytest.mark.processes
async def test_a_disconnect_and_a_ban_through_the_api_reach_both_workers_within_a_second(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = api_server(start_server, CHAT_STREAMS_PER_SESSION="100")
    token = sign(claims(sub="alice"))
    async with aiohttp.ClientSession(server.url, headers=key(MODERATE)) as http:

        async def ended_within_a_second(method: str, path: str, body: Any, status: int) -> None:
            async with contextlib.AsyncExitStack() as stack:
                streams = await streams_everywhere(stack, [server], token)
                started = time.monotonic()
                resp = await http.request(method, f"{V1}/users/alice/{path}", json=body)
                assert resp.status == status, await resp.text()
                await all_closed_within(streams, 1.0 - (time.monotonic() - started))

        await ended_within_a_second("POST", "disconnect", {"reconnect": True}, 202)
        await ended_within_a_second("PUT", "ban", {"reason": "spam"}, 204)
        async with aiohttp.ClientSession(server.url, headers=bearer(token)) as alice:
            async with alice.get(f"{LOBBY}/events") as resp:
                assert (await error_of(resp, 403))["code"] == "banned"
            resp = await http.delete(f"{V1}/users/alice/ban")
            assert resp.status == 204
            async with alice.get(f"{LOBBY}/events") as resp:
                assert resp.status == 200


@pytest.mark.processes
async def test_a_server_without_keys_has_no_server_api(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with aiohttp.ClientSession(server.url) as http:
        unknown = await http.get("/server/v2/rooms")
        expected = (unknown.status, await unknown.json())
        for method, path, body, scope, _ in ROUTES:
            resp = await http.request(method, path, json=body, headers=key(SCOPE_SECRETS[scope]))
            assert (resp.status, await resp.json()) == expected, (method, path)


@pytest.mark.processes
async def test_the_server_api_works_on_a_redis_cluster(
    start_server: Callable[..., ServerProcess], cluster_url: str
) -> None:
    # Rooms spread over every shard; the registry lives in one slot.
    settings = {"CHAT_SERVER_API_KEYS": ",".join(KEYS)}
    server = start_server(workers=2, env=settings, redis_url=cluster_url)
    rooms = [f"room-{i:03}" for i in range(100)]
    async with aiohttp.ClientSession(server.url, headers=key(ALL)) as http:
        for text in ("one", "two"):
            resp = await http.post(f"{V1}/broadcast", json={"rooms": rooms, "text": text})
            assert resp.status == 200, await resp.text()
            results = (await resp.json())["results"]
            assert [r["message"]["text"] for r in results] == [text] * 100
        seen: list[str] = []
        cursor = ""
        while cursor is not None:
            resp = await http.get(f"{V1}/rooms?limit=30&cursor={cursor}")
            page = await resp.json()
            seen += [r["room"] for r in page["rooms"]]
            cursor = page["cursor"]
        assert seen == rooms
        resp = await http.get(f"{V1}/rooms/room-042")
        assert (await resp.json())["length"] == 2
        resp = await http.get(f"{V1}/rooms/room-042/messages?after=0-0&limit=1")
        assert [m["text"] for m in (await resp.json())["messages"]] == ["one"]
        resp = await http.post(f"{V1}/users/alice/disconnect", json={"reconnect": False})
        assert resp.status == 202
