"""Editing and deleting messages: live on both transports and both workers,
resumed in order and once, folded into history with exact limits, and
refused (writing nothing) to whoever may not. Real server processes and
in-process apps, real tokens, real Redis."""

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

from harness.chat import id_key
from server.core.errors import BadRequest, NotFound
from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of, in_background, sse_events
from .test_refusals import Footprint
from .test_signin import bearer

pytestmark = pytest.mark.timeout(60)

ROOM = "/api/rooms/general"
ALICE = bearer(sign(claims(sub="alice")))
BOB = bearer(sign(claims(sub="bob")))
MODERATOR = bearer(sign(claims(sub="mod", rooms={"*": "moderator"})))
CHANGES = ("message", "message_updated", "message_deleted")

Event = tuple[str, str | None, Any]  # (kind, the id to resume from, data)


class Feed:
    """One stream's chat events (messages, edits, deletions) and gap notices,
    as (kind, id, data): SSE events and WebSocket frames alike."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.worker: str | None = None
        self._changed = asyncio.Event()

    def add(self, kind: str, event_id: str | None, data: Any) -> None:
        if kind in (*CHANGES, "gap"):
            self.events.append((kind, event_id, data))
            self._changed.set()

    @property
    def chat(self) -> list[Event]:
        return [event for event in self.events if event[0] in CHANGES]

    async def wait_for(self, predicate: Callable[[Feed], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_len(self, n: int) -> None:
        await self.wait_for(lambda feed: len(feed.chat) >= n)


def ws_event(frame: dict[str, Any]) -> Event:
    kind = frame["type"]
    if kind == "message":
        return kind, frame["message"]["id"], frame["message"]
    if kind == "message_updated":
        return kind, frame["event_id"], frame["message"]
    if kind == "message_deleted":
        return kind, frame["event_id"], {"id": frame["id"]}
    return kind, None, {k: v for k, v in frame.items() if k != "type"}


@contextlib.asynccontextmanager
async def feed(
    session: aiohttp.ClientSession,
    kind: str,
    since: str | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Feed]:
    """A stream of the room, SSE (resuming with Last-Event-ID) or WebSocket (?since=)."""
    result = Feed()
    opened = asyncio.Event()

    async def sse() -> None:
        sent = dict(headers or {})
        if since is not None:
            sent["Last-Event-ID"] = since
        async with session.get(
            f"{ROOM}/events", headers=sent, timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            assert resp.status == 200, await resp.text()
            result.worker = resp.headers["X-Chat-Worker"]
            opened.set()
            async for event in sse_events(resp):
                if event.event in (*CHANGES, "gap"):
                    result.add(event.event, event.id, event.json())

    async def ws() -> None:
        query = "" if since is None else f"?since={since}"
        async with session.ws_connect(f"{ROOM}/ws{query}", headers=headers) as socket:
            result.worker = socket._response.headers["X-Chat-Worker"]
            opened.set()
            async for msg in socket:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    result.add(*ws_event(json.loads(msg.data)))

    async with in_background(sse() if kind == "sse" else ws()) as task:
        waiter = asyncio.ensure_future(opened.wait())
        try:
            await asyncio.wait([task, waiter], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not opened.is_set():
            task.result()  # (its error)
            raise AssertionError("the stream did not open")
        yield result


@contextlib.asynccontextmanager
async def feed_on_worker(
    session: aiohttp.ClientSession, kind: str, worker: str, headers: dict[str, str]
) -> AsyncIterator[Feed]:
    """A live stream served by ``worker`` (the kernel picks who accepts: try again)."""
    async with asyncio.timeout(20):
        while True:
            async with feed(session, kind, headers=headers) as opened:
                if opened.worker == worker:
                    yield opened
                    return


async def post(session: Any, text: str, headers: dict[str, str]) -> dict[str, Any]:
    async with session.post(f"{ROOM}/messages", json={"text": text}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["message"]  # type: ignore[no-any-return]


async def edit(session: Any, message_id: str, text: Any, headers: dict[str, str]) -> Any:
    async with session.patch(
        f"{ROOM}/messages/{message_id}", json={"text": text}, headers=headers
    ) as resp:
        await resp.read()
        return resp


async def delete(session: Any, message_id: str, headers: dict[str, str]) -> Any:
    async with session.delete(f"{ROOM}/messages/{message_id}", headers=headers) as resp:
        await resp.read()
        return resp


async def history(session: Any, **params: Any) -> list[dict[str, Any]]:
    async with session.get(f"{ROOM}/messages", params=params) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["messages"]  # type: ignore[no-any-return]


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET})


@pytest.mark.processes
async def test_edits_and_deletions_reach_sse_and_websocket_clients_on_both_workers(
    start_server: Callable[..., ServerProcess], any_redis_url: str
) -> None:
    """On one Redis, and on a Redis Cluster (one script in the room's slot,
    published on its shard channel)."""
    server = start_server(workers=2, redis_url=any_redis_url, env={"CHAT_AUTH_JWT_SECRET": SECRET})
    async with aiohttp.ClientSession(server.url) as session, contextlib.AsyncExitStack() as stack:
        feeds = [
            await stack.enter_async_context(feed_on_worker(session, kind, worker, BOB))
            for kind in ("sse", "ws")
            for worker in ("0", "1")
        ]
        first = await post(session, "hello", ALICE)
        second = await post(session, "world", ALICE)
        async with session.patch(
            f"{ROOM}/messages/{first['id']}", json={"text": "hello, edited"}, headers=ALICE
        ) as resp:
            assert resp.status == 200, await resp.text()
            edited = (await resp.json())["message"]
        assert edited == {**first, "text": "hello, edited", "edited": edited["edited"]}
        assert edited["edited"] >= first["ts"]
        resp = await delete(session, second["id"], ALICE)
        assert resp.status == 204
        for stream in feeds:
            await stream.wait_len(4)
        # The same events, in the same order, with the same ids to resume
        # from, on both transports and both workers.
        expected = feeds[0].chat
        assert [stream.chat for stream in feeds] == [expected] * 4
        kinds = [kind for kind, _, _ in expected]
        assert kinds == ["message", "message", "message_updated", "message_deleted"]
        assert [data for _, _, data in expected] == [first, second, edited, {"id": second["id"]}]
        ids = [event_id for _, event_id, _ in expected]
        assert ids[:2] == [first["id"], second["id"]]
        assert len(set(ids)) == 4 and ids == sorted(ids, key=id_key)
        assert await history(session) == [edited]


@pytest.mark.processes
async def test_a_client_offline_during_an_edit_and_a_delete_resumes_them_in_order_once(
    server: ServerProcess,
) -> None:
    expected_kinds = ["message_updated", "message_deleted", "message", "message_updated"]
    async with aiohttp.ClientSession(server.url) as session:
        for kind in ("sse", "ws"):
            seen = [await post(session, f"{kind} {n}", ALICE) for n in range(3)]
            # Offline: an edit, a deletion, a message, another edit.
            resp = await edit(session, seen[0]["id"], "first, edited", ALICE)
            assert resp.status == 200
            assert (await delete(session, seen[1]["id"], ALICE)).status == 204
            after = await post(session, "after", ALICE)
            assert (await edit(session, after["id"], "after, edited", ALICE)).status == 200
            async with feed(session, kind, since=seen[-1]["id"], headers=BOB) as resumed:
                await resumed.wait_len(4)
                await post(session, f"live {kind}", ALICE)
                await resumed.wait_len(5)
                events = resumed.chat
            assert [k for k, _, _ in events] == [*expected_kinds, "message"]
            assert events[0][2]["text"] == "first, edited" and events[0][2]["id"] == seen[0]["id"]
            assert events[1][2] == {"id": seen[1]["id"]}
            assert events[2][2] == after
            assert events[3][2]["text"] == "after, edited"
            assert resumed.events == events  # no gap notice
            # Resuming from the last edit: nothing before it comes again.
            async with feed(session, kind, since=events[3][1], headers=BOB) as again:
                await again.wait_len(1)
                await post(session, f"live again {kind}", ALICE)
                await again.wait_len(2)
                assert [(k, d["text"]) for k, _, d in again.chat] == [
                    ("message", f"live {kind}"),
                    ("message", f"live again {kind}"),
                ]
        # Resuming from the very start replays every entry once, in order.
        async with feed(session, "ws", since="0-0", headers=BOB) as everything:
            await everything.wait_len(18)
            ids = [event_id for _, event_id, _ in everything.chat]
            assert len(set(ids)) == len(ids) == 18
            assert ids == sorted(ids, key=id_key)


@pytest.mark.processes
async def test_history_folds_edits_and_leaves_deleted_messages_out_with_exact_limits(
    server: ServerProcess, redis_url: str
) -> None:
    async with aiohttp.ClientSession(server.url) as session:
        posted = [await post(session, f"m{n}", ALICE) for n in range(70)]
        deleted = {m["id"] for m in posted[::7]}  # 10 of them, from the oldest to the newest
        for message_id in deleted:
            assert (await delete(session, message_id, ALICE)).status == 204
        edited = {m["id"]: f"{m['text']} (edited)" for m in posted[3::5] if m["id"] not in deleted}
        for message_id, text in edited.items():
            assert (await edit(session, message_id, text, ALICE)).status == 200
        kept = [m for m in posted if m["id"] not in deleted]
        assert len(kept) == 60

        def expect(messages: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
            return [(m["id"], edited.get(m["id"], m["text"]), m["id"] in edited) for m in messages]

        def seen(messages: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
            return [(m["id"], m["text"], "edited" in m) for m in messages]

        newest = await history(session, limit=50)
        assert seen(newest) == expect(kept[-50:])
        older = await history(session, limit=50, before=newest[0]["id"])
        assert seen(older) == expect(kept[:10])
        # Over a page of text at once (50 messages at the default message
        # length): written a page at a time, the rest read after the first.
        assert seen(await history(session, limit=200)) == expect(kept)
        assert seen(await history(session, limit=55, before=kept[-1]["id"])) == expect(kept[-56:-1])
        # Edits and deletions are entries of the capped stream too.
        admin = aioredis.Redis.from_url(redis_url)
        try:
            assert await admin.xlen("chat:{general}:messages") == 70 + 10 + len(edited)
        finally:
            await admin.aclose()


@pytest.mark.processes
async def test_who_may_edit_and_delete_and_what_a_refusal_writes(
    server: ServerProcess, redis: aioredis.Redis
) -> None:
    async with aiohttp.ClientSession(server.url) as session:
        mine = await post(session, "alice's", ALICE)
        bobs = await post(session, "bob's", BOB)
        before = await Footprint.of(redis)
        # Another user may neither edit nor delete; a moderator may not edit.
        for headers in (BOB, MODERATOR):
            error = await error_of(await edit(session, mine["id"], "mine now", headers), 403)
            assert error["code"] == "forbidden"
        error = await error_of(await delete(session, mine["id"], BOB), 403)
        assert error["code"] == "forbidden"
        # No such message, a malformed id, bad text.
        for message_id in ("1-0", "99999999999999-0"):
            error = await error_of(await edit(session, message_id, "x", ALICE), 404)
            assert error["code"] == "not_found"
            assert (await delete(session, message_id, ALICE)).status == 404
        for message_id in ("abc", "1-x", "1-99999999999999999999999"):
            error = await error_of(await edit(session, message_id, "x", ALICE), 400)
            assert (await delete(session, message_id, MODERATOR)).status == 400
        for text in ("", "   ", None, 42):
            await error_of(await edit(session, mine["id"], text, ALICE), 400)
        await error_of(await edit(session, mine["id"], "x" * 2001, ALICE), 413)
        async with session.patch(
            f"{ROOM}/messages/{mine['id']}", data=b"{not json", headers=ALICE
        ) as resp:
            await error_of(resp, 400)
        form = {**ALICE, "Content-Type": "application/x-www-form-urlencoded"}
        async with session.patch(
            f"{ROOM}/messages/{mine['id']}", data=b"text=x", headers=form
        ) as resp:
            await error_of(resp, 415)
        # The same paths of a room name that cannot be: 404.
        async with session.patch(
            f"/api/rooms/No!/messages/{mine['id']}", json={"text": "x"}, headers=ALICE
        ) as resp:
            await error_of(resp, 404)
        (await Footprint.of(redis)).assert_same_as(before)
        # A moderator deletes anyone's message, the author its own; then it is gone.
        assert (await delete(session, mine["id"], MODERATOR)).status == 204
        assert (await delete(session, bobs["id"], BOB)).status == 204
        for headers in (ALICE, MODERATOR):
            assert (await delete(session, mine["id"], headers)).status == 404
        error = await error_of(await edit(session, bobs["id"], "again", BOB), 404)
        assert error["code"] == "not_found"
        # A change entry is not a message.
        assert await history(session) == []


@pytest.mark.processes
async def test_an_author_may_edit_only_within_the_edit_window(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET, "CHAT_EDIT_WINDOW_S": "1"}
    )
    async with aiohttp.ClientSession(server.url) as session:
        message = await post(session, "soon too old", ALICE)
        assert (await edit(session, message["id"], "in time", ALICE)).status == 200
        posted_ms = int(message["id"].split("-")[0])
        await asyncio.sleep(max(0.0, posted_ms / 1000 + 1.1 - time.time()))
        error = await error_of(await edit(session, message["id"], "too late", ALICE), 403)
        assert error["code"] == "edit_window"
        assert [m["text"] for m in await history(session)] == ["in time"]
        # Deleting has no window.
        assert (await delete(session, message["id"], ALICE)).status == 204


# ---------------------------------------------------------------- in-process


async def app_client(make_app: Any, aiohttp_client: Any, **config: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"], **config)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


@pytest.mark.parametrize(
    "budget",
    [
        {"rate_limit_per_s": 0.01, "rate_limit_burst": 3},
        {"address_rate_limit_per_s": 0.01, "address_rate_limit_burst": 3},
    ],
)
async def test_an_edit_costs_what_a_message_costs_and_a_refused_one_writes_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis, budget: dict[str, Any]
) -> None:
    client = await app_client(make_app, aiohttp_client, **budget)
    message = await post(client, "one", ALICE)
    # Refused requests cost nothing: what they took goes back.
    for _ in range(5):
        assert (await edit(client, "1-0", "no such message", ALICE)).status == 404
        assert (await delete(client, message["id"], BOB)).status == 403
    for text in ("two", "three"):
        assert (await edit(client, message["id"], text, ALICE)).status == 200
    before = await Footprint.of(redis)
    resp = await edit(client, message["id"], "four", ALICE)
    error = await error_of(resp, 429)
    assert error["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    await error_of(await delete(client, message["id"], ALICE), 429)
    (await Footprint.of(redis)).assert_same_as(before)
    assert [m["text"] for m in await history(client)] == ["three"]


async def test_a_banned_user_may_neither_edit_nor_delete(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    message = await post(client, "before the ban", ALICE)
    await client.app[keys.MODERATION].ban("alice", rooms=["general"])
    before = await Footprint.of(redis)
    for resp in (
        await edit(client, message["id"], "after the ban", ALICE),
        await delete(client, message["id"], ALICE),
    ):
        assert (await error_of(resp, 403))["code"] == "banned"
    (await Footprint.of(redis)).assert_same_as(before)
    await client.app[keys.MODERATION].unban("alice", rooms=["general"])
    assert (await edit(client, message["id"], "after the ban", ALICE)).status == 200


async def test_roles_private_rooms_and_anonymous_visitors(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    # An anonymous visitor (a cookie session) edits and deletes its own.
    async with client.get("/api/session") as resp:
        assert resp.status == 200
    own = await post(client, "anonymous", {})
    assert (await edit(client, own["id"], "still anonymous", {})).status == 200
    assert (await delete(client, own["id"], {})).status == 204
    # A private room: 404 without a grant, 403 for a reader, like posting.
    team = "/api/rooms/team-x/messages"
    member = bearer(sign(claims(sub="carol", rooms={"team-*": "member"})))
    reader = bearer(sign(claims(sub="carol", rooms={"team-x": "reader"})))
    async with client.post(team, json={"text": "team"}, headers=member) as resp:
        assert resp.status == 201
        message_id = (await resp.json())["message"]["id"]
    for headers, status in ((ALICE, 404), (reader, 403)):
        async with client.patch(f"{team}/{message_id}", json={"text": "x"}, headers=headers) as r:
            await error_of(r, status)
        async with client.delete(f"{team}/{message_id}", headers=headers) as r:
            await error_of(r, status)
    async with client.delete(f"{team}/{message_id}", headers=member) as resp:
        assert resp.status == 204
    # Where anonymous visitors only read, or may do nothing.
    for mode, status in (("read", 403), ("none", 401)):
        other = await app_client(make_app, aiohttp_client, anonymous=mode)
        message = await post(other, "signed in", ALICE)
        await error_of(await edit(other, message["id"], "x", {}), status)
        await error_of(await delete(other, message["id"], {}), status)


async def test_the_backend_deletes_any_message_through_the_service(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    messages = client.app[keys.MESSAGES]
    message = await post(client, "to be removed", ALICE)
    deletion = await messages.delete("general", message["id"], by=None)
    assert deletion.to_dict() == {"id": message["id"]}
    assert await history(client) == []
    with pytest.raises(NotFound):
        await messages.delete("general", message["id"], by=None)
    with pytest.raises(NotFound):
        await messages.delete("No!", message["id"], by=None)
    with pytest.raises(BadRequest):
        await messages.delete("general", "not-an-id", by=None)


async def test_the_changes_hash_lives_as_long_as_the_stream_and_forgets_trimmed_messages(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, history_len=50, room_ttl_s=1000)
    stream, changes = "chat:{general}:messages", "chat:{general}:changes"
    for n in range(300):
        message = await post(client, f"m{n}", ALICE)
        assert (await edit(client, message["id"], f"m{n} edited", ALICE)).status == 200
        # Never more fields than entries: those of trimmed messages go.
        assert await redis.hlen(changes) <= await redis.xlen(stream)
    first = (await redis.xrange(stream, count=1))[0][0]
    assert await redis.xlen(stream) < 600
    assert sum(1 for field in await redis.hkeys(changes) if id_key(field) < id_key(first)) < 50
    newest = await history(client, limit=20)
    assert [m["text"] for m in newest] == [f"m{n} edited" for n in range(280, 300)]
    # A message pushes the expiry of both back, as an edit does.
    await redis.expire(changes, 10)
    await post(client, "keeps the room", ALICE)
    assert await redis.ttl(stream) > 990 and await redis.ttl(changes) > 990


async def test_a_page_reads_past_a_long_run_of_deleted_messages(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    posted = [await post(client, f"m{n}", ALICE) for n in range(150)]
    for message in posted[30:]:
        assert (await delete(client, message["id"], ALICE)).status == 204
    assert await history(client, limit=1) == [posted[29]]
    assert await history(client, limit=40) == posted[:30]
    assert await history(client, limit=200) == posted[:30]
    assert await history(client, limit=5, before=posted[140]["id"]) == posted[25:30]
