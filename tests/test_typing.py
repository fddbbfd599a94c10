"""Typing notices: the others in the room get them on SSE and WebSocket, on
every worker, the typer's own connections never; at most one per user per
room every 2 s across workers; nothing stored but a key that expires with
the window; none in rooms that only count their users; refused (writing
nothing) as posting is. Real server processes and in-process apps, real
tokens, real Redis."""

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

from server.core.typing_notices import Recent
from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import ServerProcess, error_of, in_background, sse_events
from .test_refusals import Footprint
from .test_signin import bearer

pytestmark = pytest.mark.timeout(60)

ROOM = "/api/rooms/general"
TYPING = f"{ROOM}/typing"
ALICE = bearer(sign(claims(sub="alice", name="Alice")))
BOB = bearer(sign(claims(sub="bob", name="Bob")))
CAROL = bearer(sign(claims(sub="carol", name="Carol")))
DAVE = bearer(sign(claims(sub="dave", name="Dave")))
TYPING_KEY = "chat:{general}:typing:alice"


class Stream:
    """One SSE or WebSocket connection to the room: every event it got, as
    (kind, data), in order; a WebSocket also sends frames."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.worker: str | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._changed = asyncio.Event()

    def add(self, kind: str, data: Any) -> None:
        self.events.append((kind, data))
        self._changed.set()

    def of(self, kind: str) -> list[Any]:
        return [data for k, data in self.events if k == kind]

    @property
    def typing(self) -> list[Any]:
        return self.of("typing")

    async def wait_for(self, predicate: Callable[[Stream], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_text(self, text: str) -> None:
        """Until the message ``text`` arrives: whatever was published on the
        room's channel before it has arrived too (one channel, in order)."""
        await self.wait_for(lambda s: any(m.get("text") == text for m in s.of("message")))


@contextlib.asynccontextmanager
async def stream(
    session: Any,
    kind: str,
    headers: dict[str, str] | None = None,
    url: Callable[[str], Any] = str,
) -> AsyncIterator[Stream]:
    """``session``: a client session with the server's base URL, or another
    with ``url`` making the server's URLs (an in-process test client's)."""
    result = Stream()
    opened = asyncio.Event()

    async def sse() -> None:
        async with session.get(
            url(f"{ROOM}/events"), headers=headers, timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            assert resp.status == 200, await resp.text()
            result.worker = resp.headers["X-Chat-Worker"]
            opened.set()
            async for event in sse_events(resp):
                assert event.event != "typing" or event.id is None  # (nothing to resume from)
                result.add(event.event, event.json())

    async def ws() -> None:
        async with session.ws_connect(url(f"{ROOM}/ws"), headers=headers) as socket:
            result.worker = socket._response.headers["X-Chat-Worker"]
            result.socket = socket
            opened.set()
            async for msg in socket:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    kind = frame.pop("type")
                    result.add(kind, frame["message"] if kind == "message" else frame)

    async with in_background(sse() if kind == "sse" else ws()) as task:
        waiter = asyncio.ensure_future(opened.wait())
        try:
            await asyncio.wait([task, waiter], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not opened.is_set():
            task.result()
            raise AssertionError("the stream did not open")
        # Subscribed once the presence snapshot came.
        await result.wait_for(lambda s: bool(s.of("presence")))
        yield result


@contextlib.asynccontextmanager
async def stream_on_worker(
    session: aiohttp.ClientSession, kind: str, worker: str, headers: dict[str, str]
) -> AsyncIterator[Stream]:
    """A stream served by ``worker`` (the kernel picks who accepts: try again)."""
    async with asyncio.timeout(20):
        while True:
            async with stream(session, kind, headers) as opened:
                if opened.worker == worker:
                    yield opened
                    return


async def type_in(session: Any, headers: dict[str, str], path: str = TYPING, **kwargs: Any) -> Any:
    """POST a typing notice on a fresh connection (so that the workers take turns)."""
    async with session.post(path, headers={**headers, "Connection": "close"}, **kwargs) as resp:
        await resp.read()
        return resp


async def post(session: Any, text: str, headers: dict[str, str]) -> None:
    async with session.post(f"{ROOM}/messages", json={"text": text}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET})


@pytest.mark.processes
async def test_others_get_typing_on_sse_and_ws_on_both_workers_and_the_typer_does_not(
    server: ServerProcess,
) -> None:
    async with aiohttp.ClientSession(server.url) as session, contextlib.AsyncExitStack() as stack:
        bobs = [
            await stack.enter_async_context(stream_on_worker(session, kind, worker, BOB))
            for kind in ("sse", "ws")
            for worker in ("0", "1")
        ]
        alices = [
            await stack.enter_async_context(stream_on_worker(session, kind, worker, ALICE))
            for kind, worker in (("sse", "0"), ("ws", "1"), ("ws", "0"))
        ]
        # Over HTTP: Bob's four connections get it, Alice's own three do not.
        assert (await type_in(session, ALICE)).status == 204
        await post(session, "after alice typed", ALICE)
        for own in (*bobs, *alices):
            await own.wait_text("after alice typed")
        for other in bobs:
            assert other.typing == [{"user_id": "alice", "name": "Alice"}]
        assert [own.typing for own in alices] == [[], [], []]
        # Over a WebSocket frame: no answer when it is sent; the others get it.
        # (Nothing says when it went out: the marker is posted once it has
        # arrived, else the marker could overtake it.)
        bob_ws = bobs[2].socket
        assert bob_ws is not None
        await bob_ws.send_json({"type": "typing"})
        for other in alices:
            await other.wait_for(lambda s: bool(s.typing))
        await post(session, "after bob typed", CAROL)
        for own in (*bobs, *alices):
            await own.wait_text("after bob typed")
        for other in alices:
            assert other.typing == [{"user_id": "bob", "name": "Bob"}]
        assert [len(own.typing) for own in bobs] == [1, 1, 1, 1]  # (Alice's, still)
        assert not any(own.of("error") or own.of("ack") for own in bobs)


@pytest.mark.processes
async def test_typing_is_coalesced_to_one_notice_per_user_per_2_s_across_workers(
    server: ServerProcess, redis: aioredis.Redis
) -> None:
    async with aiohttp.ClientSession(server.url) as session, contextlib.AsyncExitStack() as stack:
        bobs = [
            await stack.enter_async_context(stream_on_worker(session, "sse", worker, BOB))
            for worker in ("0", "1")
        ]
        length = await redis.xlen("chat:{general}:messages")
        workers = set()
        start = time.monotonic()
        for _ in range(10):
            resp = await type_in(session, ALICE)
            assert resp.status == 204
            workers.add(resp.headers["X-Chat-Worker"])
        assert time.monotonic() - start < 1
        assert workers == {"0", "1"}, "the requests did not reach both workers"
        # The window's key lives at most 2 s.
        assert 0 < await redis.pttl(TYPING_KEY) <= 2000
        await post(session, "marker", BOB)
        for bob in bobs:
            await bob.wait_text("marker")
            assert len(bob.typing) == 1
        # Not in the room's stream: nothing to replay.
        assert await redis.xlen("chat:{general}:messages") == length + 1
        # The key is gone once the window is over, and another notice goes out.
        async with asyncio.timeout(3):
            while await redis.exists(TYPING_KEY):
                await asyncio.sleep(0.05)
        assert time.monotonic() - start <= 2.5
        await asyncio.sleep(max(0.0, start + 2.2 - time.monotonic()))
        assert (await type_in(session, ALICE)).status == 204
        for bob in bobs:
            await bob.wait_for(lambda s: len(s.typing) == 2, timeout=5)


# ---------------------------------------------------------------- in-process


async def typing_keys(redis: aioredis.Redis) -> list[Any]:
    return [key async for key in redis.scan_iter(match="chat:{*}:typing:*")]


async def app_client(make_app: Any, aiohttp_client: Any, **config: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"], **config)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def test_nothing_is_stored_but_a_key_that_expires_with_the_window(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    before = await Footprint.of(redis)
    assert (await type_in(client, ALICE)).status == 204
    assert (await type_in(client, ALICE, json={})).status == 204
    after = await Footprint.of(redis)
    assert set(after.usage) - set(before.usage) == {TYPING_KEY}
    async with asyncio.timeout(3):
        while await redis.exists(TYPING_KEY):
            await asyncio.sleep(0.05)
    (await Footprint.of(redis)).assert_same_as(before)


async def test_a_room_that_only_counts_its_users_gets_no_typing_notices(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, presence_list_max=1)
    async with stream(client.session, "sse", BOB, client.make_url) as bob:
        # One user online: within the limit, notices go out.
        assert (await type_in(client, ALICE)).status == 204
        await bob.wait_for(lambda s: len(s.typing) == 1)
        async with stream(client.session, "ws", CAROL, client.make_url):
            await bob.wait_for(lambda s: s.events[-1][1].get("count") == 2)
            # Two online, over the limit of one: accepted, and nothing sent.
            pubsub = redis.pubsub()
            await pubsub.subscribe("chat:{general}:live")
            try:
                resp = await type_in(client, DAVE)
                assert resp.status == 204
                await post(client, "marker", DAVE)
                await bob.wait_text("marker")
                heard = []
                while (message := await pubsub.get_message(timeout=0.2)) is not None:
                    if message["type"] == "message":
                        heard.append(str(message["data"])[:2])
            finally:
                await pubsub.aclose()
            assert "t\n" not in heard and "m\n" in heard
            assert len(bob.typing) == 1
            assert not await redis.exists("chat:{general}:typing:dave")
            # The worker knew the room counts only: the notice charged no budget either.
            assert not await redis.exists("chat:rate:typing:{dave}")


async def test_typing_in_a_counted_room_by_an_anonymous_cookie_reads_no_session(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, presence_list_max=1)
    jar = client.session.cookie_jar
    assert (await client.get("/api/session")).status == 200  # (an anonymous session)
    (cookie,) = [c.value for c in jar if c.key == "chat_session"]
    assert cookie.startswith("a-")  # (made without a sign-in: it never holds one)
    async with client.post("/api/auth", json={"token": sign(claims(sub="erin"))}) as resp:
        assert resp.status == 200
    (signed,) = [c.value for c in jar if c.key == "chat_session"]
    assert not signed.startswith("a-")  # (signing in made a session of its own)
    jar.clear()
    anonymous = {"Cookie": f"chat_session={cookie}"}
    async with (
        stream(client.session, "sse", BOB, client.make_url) as bob,
        stream(client.session, "ws", CAROL, client.make_url),
    ):
        await bob.wait_for(lambda s: s.events[-1][1].get("count") == 2)
        # The anonymous session is gone: the notice is answered as before,
        # without a new session, since its session was not read at all.
        await redis.delete("chat_session_" + cookie.rpartition(".")[0])
        before = await Footprint.of(redis)
        resp = await type_in(client, anonymous)
        assert resp.status == 204 and "Set-Cookie" not in resp.headers
        (await Footprint.of(redis)).assert_same_as(before)
        # Refusals stand: a private room, a reader's token, a bad body.
        await error_of(await type_in(client, anonymous, "/api/rooms/team-a/typing"), 404)
        reader = bearer(sign(claims(sub="reader", rooms={"general": "reader"})))
        await error_of(await type_in(client, reader), 403)
        await error_of(await type_in(client, anonymous, json=[1]), 400)
        # A signed-in session's cookie is read: its grants decide.
        resp = await type_in(client, {"Cookie": f"chat_session={signed}"})
        assert resp.status == 204 and "Set-Cookie" not in resp.headers
        assert len(bob.typing) == 0


async def test_a_typing_frame_in_a_counted_room_is_answered_only_when_refused(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, presence_list_max=1)
    reader = bearer(sign(claims(sub="reader", rooms={"general": "reader"})))
    async with (
        stream(client.session, "sse", BOB, client.make_url) as bob,
        stream(client.session, "ws", CAROL, client.make_url),
    ):
        await bob.wait_for(lambda s: s.events[-1][1].get("count") == 2)
        for frame in ('{"type":"typing"}', '{"type": "typing"}'):
            async with client.ws_connect(f"{ROOM}/ws", headers=reader) as ws:
                await ws.send_str(frame)
                while (answer := await ws.receive_json(timeout=5))["type"] != "error":
                    pass
                assert answer["error"]["code"] == "forbidden"
            async with client.ws_connect(f"{ROOM}/ws", headers=DAVE) as ws:
                await ws.send_str(frame)
                await ws.send_json({"type": "message", "text": "after typing", "ref": 1})
                while (answer := await ws.receive_json(timeout=5))["type"] not in ("ack", "error"):
                    pass
                assert answer["type"] == "ack" and answer["ref"] == 1
        assert len(bob.typing) == 0
        assert not await typing_keys(redis)


async def test_an_anonymous_cookie_is_not_taken_as_one_when_its_signature_is_wrong(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client, presence_list_max=1)
    async with (
        stream(client.session, "sse", BOB, client.make_url) as bob,
        stream(client.session, "ws", CAROL, client.make_url),
    ):
        await bob.wait_for(lambda s: s.events[-1][1].get("count") == 2)
        forged = {"Cookie": "chat_session=a-0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAA"}
        resp = await type_in(client, forged)
        # A new session is made, as for any request without a good cookie.
        assert resp.status == 204 and "chat_session=a-" in resp.headers["Set-Cookie"]


async def test_typing_is_refused_as_posting_is_and_a_refusal_writes_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    await client.app[keys.MODERATION].ban("alice", rooms=["general"])
    before = await Footprint.of(redis)
    error = await error_of(await type_in(client, ALICE), 403)
    assert error["code"] == "banned"
    # A private room without access, as one never used.
    error = await error_of(await type_in(client, BOB, "/api/rooms/team-a/typing"), 404)
    assert error["code"] == "not_found"
    await error_of(await type_in(client, BOB, "/api/rooms/No!/typing"), 404)
    await error_of(await type_in(client, BOB, json=[1]), 400)
    await error_of(await type_in(client, BOB, data=b"{nope"), 400)
    plain = {**BOB, "Content-Type": "text/plain"}
    async with client.post(TYPING, data=b"typing", headers=plain) as resp:
        await error_of(resp, 415)
    async with client.post(TYPING, headers={**BOB, "Origin": "http://evil.example"}) as resp:
        await error_of(resp, 403)
    assert (await client.get(TYPING, headers=BOB)).status == 405
    # (A banned user opens no WebSocket: 403, as any stream.)
    (await Footprint.of(redis)).assert_same_as(before)


async def test_a_reader_may_not_type(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client, anonymous="read")
    reader = bearer(sign(claims(sub="reader", rooms={"general": "reader"})))
    assert (await client.get("/api/session")).status == 200  # (an anonymous session)
    before = await Footprint.of(redis)
    for headers in ({}, reader):
        error = await error_of(await type_in(client, headers), 403)
        assert error["code"] == "forbidden"
    (await Footprint.of(redis)).assert_same_as(before)
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_json({"type": "typing"})
        while (frame := await ws.receive_json(timeout=5))["type"] != "error":
            pass
        assert frame["error"]["code"] == "forbidden"
    assert not await typing_keys(redis)


@pytest.mark.parametrize(
    "budget",
    [
        {"rate_limit_per_s": 0.01, "rate_limit_burst": 3},
        {"address_rate_limit_per_s": 0.01, "address_rate_limit_burst": 3},
    ],
)
async def test_a_flood_of_typing_is_rate_limited_apart_from_messages(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis, budget: dict[str, Any]
) -> None:
    client = await app_client(make_app, aiohttp_client, **budget)
    for _ in range(3):
        assert (await type_in(client, ALICE)).status == 204
    await redis.delete(TYPING_KEY)  # (the window over: only the budget refuses now)
    before = await Footprint.of(redis)
    resp = await type_in(client, ALICE)
    error = await error_of(resp, 429)
    assert error["code"] == "rate_limited" and int(resp.headers["Retry-After"]) >= 1
    (await Footprint.of(redis)).assert_same_as(before)
    async with client.ws_connect(f"{ROOM}/ws", headers=ALICE) as ws:
        await ws.send_json({"type": "typing"})
        while (frame := await ws.receive_json(timeout=5))["type"] != "error":
            pass
        assert frame["error"]["code"] == "rate_limited"
    assert not await typing_keys(redis)
    # Typing took nothing from the message budget.
    await post(client, "still may post", ALICE)


def test_a_worker_remembers_a_bounded_number_of_recent_notices() -> None:
    now = [0.0]
    recent = Recent(max_entries=100, clock=lambda: now[0])
    recent.hold("general", "alice")
    assert not recent.due("general", "alice") and recent.due("general", "bob")
    now[0] = 1.9
    assert not recent.due("general", "alice")
    now[0] = 2.0
    assert recent.due("general", "alice")
    for n in range(1000):
        recent.hold("general", f"u{n}")
        assert len(recent) <= 100
    assert not recent.due("general", "u999") and recent.due("general", "u0")
    recent.hold("general", "short", 0.5)
    recent.release("general", "u999")
    assert recent.due("general", "u999")
