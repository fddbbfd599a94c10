"""Moderation: disconnects, bans and memberships, as the server API will call
them (:class:`server.web.moderation.Moderation`). In-process apps and real
server processes, real tokens, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from server.common import redisurl
from server.core.errors import BadRequest
from server.store.clients import redis_client
from server.store.keys import users_key
from server.web import state as keys
from server.web.moderation import Moderation

from .openapi_check import client_session
from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of, sse_events, subscribe_on_worker
from .test_refusals import Footprint
from .test_signin import bearer

pytestmark = pytest.mark.openapi

ALICE = bearer(sign(claims(sub="alice")))
BOB = bearer(sign(claims(sub="bob")))
LOBBY = "/api/rooms/lobby"


async def app_client(make_app: Any, aiohttp_client: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"])
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


def moderation(client: Any) -> Moderation:
    return client.app[keys.MODERATION]  # type: ignore[no-any-return]


class Sse:
    """An SSE stream read in the background: its events, and how it ended."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.online = asyncio.Event()  # the user's own presence is in
        self.closed = asyncio.Event()

    def last(self, name: str) -> Any:
        return next(json.loads(data) for event, data in reversed(self.events) if event == name)


@contextlib.asynccontextmanager
async def sse(client: Any, path: str, headers: dict[str, str], user_id: str) -> AsyncIterator[Sse]:
    stream = Sse()

    async def read(resp: Any) -> None:
        try:
            async for event in sse_events(resp):
                stream.events.append((event.event, event.data))
                if event.event in ("presence", "presence_diff") and user_id in event.data:
                    stream.online.set()
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            stream.closed.set()

    resp = await client.get(f"{path}/events", headers=headers)
    assert resp.status == 200, await resp.text()
    task = asyncio.create_task(read(resp))
    try:
        async with asyncio.timeout(10):
            await stream.online.wait()
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        resp.close()


async def close_code(ws: Any, timeout: float = 5) -> int | None:
    """Read frames until the server closes; its close code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return ws.close_code  # type: ignore[no-any-return]


async def online(ws: Any, user_id: str) -> None:
    """Until the WebSocket's presence shows ``user_id``."""
    async with asyncio.timeout(10):
        while True:
            frame = await ws.receive_json()
            if frame["type"] in ("presence", "presence_diff") and user_id in json.dumps(frame):
                return


async def test_a_disconnect_ends_the_users_streams_telling_them_whether_to_come_back(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    for reconnect, code in ((True, 4000), (False, 4403)):
        async with (
            sse(client, LOBBY, ALICE, "alice") as events,
            sse(client, LOBBY, BOB, "bob") as other,
            client.ws_connect(f"{LOBBY}/ws", headers=ALICE) as ws,
        ):
            await online(ws, "alice")
            await moderation(client).disconnect("alice", reconnect=reconnect)
            assert await close_code(ws) == code
            async with asyncio.timeout(5):
                await events.closed.wait()
            reason = "disconnected" if reconnect else "removed"
            assert events.last("disconnected") == {"reason": reason, "reconnect": reconnect}
            assert not other.closed.is_set()
            # Reconnecting is up to the client; the server does not refuse it.
            async with client.ws_connect(f"{LOBBY}/ws", headers=ALICE) as again:
                await online(again, "alice")


async def test_a_disconnect_in_one_room_leaves_the_others(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    async with (
        sse(client, LOBBY, ALICE, "alice") as lobby,
        sse(client, "/api/rooms/other", ALICE, "alice") as other,
    ):
        await moderation(client).disconnect("alice", room="lobby", reconnect=True)
        async with asyncio.timeout(5):
            await lobby.closed.wait()
        assert not other.closed.is_set()


async def refused(client: Any, room: str, headers: dict[str, str]) -> list[int]:
    """The statuses of a post and of opening each kind of stream in ``room``."""
    path = f"/api/rooms/{room}"
    statuses = []
    resp = await client.post(f"{path}/messages", json={"text": "hi"}, headers=headers)
    statuses.append(resp.status)
    if resp.status == 403:
        assert (await error_of(resp, 403))["code"] == "banned"
    resp = await client.get(f"{path}/events", headers=headers)
    statuses.append(resp.status)
    if resp.status == 403:
        assert (await error_of(resp, 403))["code"] == "banned"
    resp.close()
    try:
        async with client.ws_connect(f"{path}/ws", headers=headers):
            statuses.append(101)
    except aiohttp.WSServerHandshakeError as exc:
        statuses.append(exc.status)
    return statuses


async def test_a_ban_ends_the_users_streams_and_refuses_it_until_lifted(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    async with (
        sse(client, LOBBY, ALICE, "alice") as events,
        client.ws_connect(f"{LOBBY}/ws", headers=ALICE) as ws,
    ):
        await online(ws, "alice")
        await moderation(client).ban("alice", reason="spam")
        assert await close_code(ws) == 4403
        async with asyncio.timeout(5):
            await events.closed.wait()
        assert events.last("disconnected") == {"reason": "banned", "reconnect": False}
    # Her streams' leaves are written after they end: the room's presence
    # keys go (in one script) with the last, before anything is compared.
    async with asyncio.timeout(5):
        while await redis.exists(users_key("lobby")):
            await asyncio.sleep(0.02)
    before = await Footprint.of(redis)
    assert await refused(client, "lobby", ALICE) == [403, 403, 403]
    (await Footprint.of(redis)).assert_same_as(before)
    assert await refused(client, "lobby", BOB) == [201, 200, 101]
    resp = await client.post("/api/auth", json={"token": sign(claims(sub="alice"))})
    assert (await error_of(resp, 403))["code"] == "banned"
    await moderation(client).unban("alice")
    assert await refused(client, "lobby", ALICE) == [201, 200, 101]
    assert (await client.post("/api/auth", json={"token": sign(claims(sub="alice"))})).status == 200


async def test_a_ban_in_some_rooms_holds_only_there(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client)
    async with (
        sse(client, LOBBY, ALICE, "alice") as lobby,
        sse(client, "/api/rooms/other", ALICE, "alice") as other,
    ):
        await moderation(client).ban("alice", rooms=["lobby", "third"])
        async with asyncio.timeout(5):
            await lobby.closed.wait()
        assert lobby.last("disconnected") == {"reason": "banned", "reconnect": False}
        assert not other.closed.is_set()
    assert await refused(client, "lobby", ALICE) == [403, 403, 403]
    assert await refused(client, "third", ALICE) == [403, 403, 403]
    assert await refused(client, "other", ALICE) == [201, 200, 101]
    assert (await client.post("/api/auth", json={"token": sign(claims(sub="alice"))})).status == 200
    await moderation(client).unban("alice", rooms=["third"])
    assert await refused(client, "third", ALICE) == [201, 200, 101]
    assert await refused(client, "lobby", ALICE) == [403, 403, 403]


async def test_a_ban_for_some_time_ends_by_itself(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    await moderation(client).ban("alice", for_s=1)
    assert await refused(client, "lobby", ALICE) == [403, 403, 403]
    assert 0 < await redis.pttl("chat:user:{alice}:bans") <= 1000
    async with asyncio.timeout(10):
        while await refused(client, "lobby", ALICE) != [201, 200, 101]:
            await asyncio.sleep(0.2)
    # A ban for ever outlasts a shorter one, in the same hash.
    await moderation(client).ban("alice", rooms=["lobby"], for_s=1)
    await moderation(client).ban("alice", rooms=["other"])
    assert await redis.pttl("chat:user:{alice}:bans") == -1


async def test_a_membership_admits_a_user_to_a_private_room_and_its_end_removes_it(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    room = "/api/rooms/team-a"
    assert (await client.get(f"{room}/messages", headers=ALICE)).status == 404
    await moderation(client).grant("team-a", "alice", "member")
    assert (await client.get(f"{room}/messages", headers=ALICE)).status == 200
    resp = await client.post(f"{room}/messages", json={"text": "hi"}, headers=ALICE)
    assert resp.status == 201
    assert (await client.get(f"{room}/messages", headers=BOB)).status == 404
    async with (
        sse(client, room, ALICE, "alice") as events,
        sse(client, LOBBY, ALICE, "alice") as lobby,
        client.ws_connect(f"{room}/ws", headers=ALICE) as ws,
    ):
        await online(ws, "alice")
        await moderation(client).revoke("team-a", "alice")
        assert await close_code(ws) == 4403
        async with asyncio.timeout(5):
            await events.closed.wait()
        assert events.last("disconnected") == {"reason": "removed", "reconnect": False}
        assert not lobby.closed.is_set()
    assert (await client.get(f"{room}/messages", headers=ALICE)).status == 404
    # A reader may read and not post.
    await moderation(client).grant("team-a", "bob", "reader")
    assert (await client.get(f"{room}/messages", headers=BOB)).status == 200
    resp = await client.post(f"{room}/messages", json={"text": "hi"}, headers=BOB)
    assert (await error_of(resp, 403))["code"] == "forbidden"


@pytest.mark.parametrize(
    ("call", "args", "kwargs"),
    [
        ("disconnect", ["not a user"], {"reconnect": True}),
        ("disconnect", ["alice"], {"room": "Not A Room", "reconnect": True}),
        ("ban", ["alice"], {"rooms": "lobby"}),
        ("ban", ["alice"], {"rooms": ["lobby", "../x"]}),
        ("ban", ["alice"], {"for_s": 0}),
        ("ban", ["alice"], {"for_s": True}),
        ("unban", ["al ice"], {}),
        ("grant", ["team-a", "alice", "owner"], {}),
        ("grant", ["", "alice", "member"], {}),
        ("revoke", ["team-a", "x" * 65], {}),
    ],
)
async def test_what_moderation_refuses_writes_nothing(
    make_app: Any,
    aiohttp_client: Any,
    redis: aioredis.Redis,
    call: str,
    args: list[Any],
    kwargs: Any,
) -> None:
    client = await app_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    with pytest.raises(BadRequest):
        await getattr(moderation(client), call)(*args, **kwargs)
    (await Footprint.of(redis)).assert_same_as(before)


async def streams_everywhere(
    stack: contextlib.AsyncExitStack, servers: list[ServerProcess], token: str
) -> list[Any]:
    """Alice's SSE and WebSocket streams on both workers of each server."""
    streams = []
    for server in servers:
        http = await stack.enter_async_context(client_session(server.url, headers=bearer(token)))
        for kind in ("sse", "ws"):
            for worker in ("0", "1"):
                stream = await subscribe_on_worker(stack, http, kind, worker, room=LOBBY)
                await stream.wait_for(
                    lambda c: any(u["user_id"] == "alice" for u in (c.presence or [[]])[-1])
                )
                streams.append(stream)
    return streams


async def all_closed_within(streams: list[Any], deadline_s: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(deadline_s):
        for stream in streams:
            await stream.closed.wait()
    return time.monotonic() - started


async def test_a_disconnect_and_a_ban_reach_every_worker_of_every_instance_within_a_second(
    start_server: Callable[..., ServerProcess], any_redis_url: str
) -> None:
    # (Eight streams at once, and those opened to land on a worker, closing.)
    env = {"CHAT_AUTH_JWT_SECRET": SECRET, "CHAT_STREAMS_PER_SESSION": "100"}
    servers = [start_server(workers=2, env=env, redis_url=any_redis_url) for _ in range(2)]
    token = sign(claims(sub="alice"))
    # The test's own instance of the service, on the same Redis (or Cluster).
    async with redis_client(any_redis_url) as probe:
        clustered = (await probe.info("cluster")).get("cluster_enabled")
    url = redisurl.cluster_url(any_redis_url) if clustered else any_redis_url
    async with redis_client(url) as client:
        await disconnect_then_ban(Moderation(client), servers, token)


async def disconnect_then_ban(
    service: Moderation, servers: list[ServerProcess], token: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        streams = await streams_everywhere(stack, servers, token)
        started = time.monotonic()
        await service.disconnect("alice", reconnect=True)
        await all_closed_within(streams, 1.0 - (time.monotonic() - started))
    async with contextlib.AsyncExitStack() as stack:
        streams = await streams_everywhere(stack, servers, token)
        started = time.monotonic()
        await service.ban("alice")
        await all_closed_within(streams, 1.0 - (time.monotonic() - started))
    for server in servers:
        async with client_session(server.url, headers=bearer(token)) as http:
            async with http.get(f"{LOBBY}/events") as resp:
                assert resp.status == 403  # (before reading a body that may not end)
                assert (await error_of(resp, 403))["code"] == "banned"
