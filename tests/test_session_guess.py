"""A worker posts with the session it read lately (a guess), confirmed in the
round trip that charges the post's budgets: a sign-out, a new sign-in or a
ban made on another worker holds at once, a refusal the guess led to is
decided again from a fresh read, and a guess is never used past its time.

Two apps on one Redis stand for two workers (each its own session store);
the cookie goes from one to the other. Real tokens, real Redis."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from server.store import session_store
from server.store.session_store import GUESS_TTL_S, GUESSES_MAX, SignedRedisStorage
from server.web import state as keys

from .signing import SECRET, claims, sign
from .support import error_of, two_apps

pytestmark = pytest.mark.openapi

ROOM = "/api/rooms/lobby/messages"


async def two_workers(make_app: Any, aiohttp_client: Any, **settings: Any) -> tuple[Any, Any]:
    """Two apps on the test's Redis; cookies are sent by hand (:func:`post`)."""
    return await two_apps(make_app, aiohttp_client, auth_jwt_secret=SECRET, **settings)


def sent(cookie: str) -> dict[str, str]:
    return {"Cookie": f"chat_session={cookie}"}


async def sign_in(client: Any, token: str, cookie: str = "") -> str:
    """The session cookie that ``token`` signs in (a new one, or ``cookie``'s)."""
    resp = await client.post("/api/auth", json={"token": token}, headers=sent(cookie))
    assert resp.status == 200, await resp.text()
    return str(resp.cookies["chat_session"].value) if "chat_session" in resp.cookies else cookie


async def post(client: Any, cookie: str, room: str = ROOM) -> Any:
    return await client.post(room, json={"text": "hi"}, headers=sent(cookie))


async def posted_by(client: Any, cookie: str, room: str = ROOM) -> str:
    resp = await post(client, cookie, room)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["message"]["user_id"])


def reads_of_sessions(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sessions ``client``'s app reads from Redis (each a round trip of its own)."""
    reads: list[str] = []
    load = SignedRedisStorage.load_session

    async def counted(store: SignedRedisStorage, request: web.Request) -> Any:
        if request.app is client.app:
            reads.append(request.cookies.get("chat_session", ""))
        return await load(store, request)

    monkeypatch.setattr(SignedRedisStorage, "load_session", counted)
    return reads


async def test_a_post_after_a_sign_out_on_another_worker_is_not_the_signed_out_users(
    make_app: Any, aiohttp_client: Any
) -> None:
    first, second = await two_workers(make_app, aiohttp_client, anonymous="none")
    cookie = await sign_in(first, sign(claims()))
    assert await posted_by(second, cookie) == "alice"
    assert await posted_by(second, cookie) == "alice"  # (now a guess of the second's)
    assert (
        await first.delete("/api/auth", headers={"Cookie": f"chat_session={cookie}"})
    ).status == 204
    resp = await post(second, cookie)
    assert (await error_of(resp, 401))["code"] == "unauthorized"
    history = await (
        await first.get(ROOM, headers={"Authorization": "Bearer " + sign(claims())})
    ).json()
    assert [m["user_id"] for m in history["messages"]] == ["alice", "alice"]


async def test_a_post_after_a_sign_in_elsewhere_takes_its_grants_away_and_back(
    make_app: Any, aiohttp_client: Any
) -> None:
    first, second = await two_workers(make_app, aiohttp_client, private_room_prefixes=["team-"])
    team = "/api/rooms/team-a/messages"
    cookie = await sign_in(first, sign(claims(rooms={"team-*": "member"})))
    assert await posted_by(second, cookie, team) == "alice"
    assert await posted_by(second, cookie, team) == "alice"
    # A newer token without the grant, on the first worker: the same session.
    assert await sign_in(first, sign(claims()), cookie) == cookie
    assert (await error_of(await post(second, cookie, team), 404))["code"] == "not_found"
    # And with it again: the second worker's guess refuses, the fresh read does not.
    assert await sign_in(first, sign(claims(rooms={"team-*": "member"})), cookie) == cookie
    assert await posted_by(second, cookie, team) == "alice"


async def test_a_ban_holds_at_once_for_a_worker_that_guesses_the_session(
    make_app: Any, aiohttp_client: Any
) -> None:
    first, second = await two_workers(make_app, aiohttp_client)
    cookie = await sign_in(first, sign(claims()))
    assert await posted_by(second, cookie) == "alice"
    assert await posted_by(second, cookie) == "alice"
    await first.app[keys.MODERATION].ban("alice")
    assert (await error_of(await post(second, cookie), 403))["code"] == "banned"


async def test_a_guessed_post_reads_no_session_of_its_own_and_a_wrong_guess_reads_it_again(
    make_app: Any, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await two_workers(make_app, aiohttp_client)
    cookie = await sign_in(first, sign(claims(name="Alice")))
    reads = reads_of_sessions(second, monkeypatch)
    assert await posted_by(second, cookie) == "alice"
    assert len(reads) == 1
    for _ in range(3):
        assert await posted_by(second, cookie) == "alice"
    assert len(reads) == 1  # (each confirmed with its budgets instead)
    assert await sign_in(first, sign(claims(name="Al")), cookie) == cookie
    resp = await post(second, cookie)
    assert (await resp.json())["message"]["name"] == "Al"
    assert len(reads) == 2


async def test_a_guess_is_never_used_past_its_time(
    make_app: Any, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(session_store.time, "monotonic", lambda: now[0])
    first, second = await two_workers(make_app, aiohttp_client)
    cookie = await sign_in(first, sign(claims()))
    reads = reads_of_sessions(second, monkeypatch)
    await posted_by(second, cookie)
    now[0] += GUESS_TTL_S - 0.01
    await posted_by(second, cookie)
    assert len(reads) == 1
    now[0] += 0.01  # (remembered when it was read, not when it was used)
    await posted_by(second, cookie)
    assert len(reads) == 2


async def test_a_worker_remembers_at_most_so_many_sessions_the_oldest_going_first(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_store, "GUESSES_MAX", 3)
    store = session_store.make_storage(redis, secret="s", max_age=60, secure=False)
    cookies = []
    for n in range(5):
        key = f"k{n}"
        await redis.set(store.redis_key(key), '{"created": 1, "session": {"user_id": "u"}}')
        cookie = store._sign(key)
        cookies.append(cookie)
        request = make_mocked_request("POST", "/", headers={"Cookie": f"chat_session={cookie}"})
        await store.load_session(request)
    guessed = [
        store.guess(make_mocked_request("POST", "/", headers={"Cookie": f"chat_session={c}"}))
        is not None
        for c in cookies
    ]
    assert guessed == [False, False, True, True, True]
    assert GUESSES_MAX >= 1000  # (the real bound is not the test's)
    assert list(itertools.islice(store._remembered, 1)) == [cookies[2]]


async def test_a_long_cookie_is_no_session_and_takes_no_room_among_the_signatures(
    redis: aioredis.Redis,
) -> None:
    store = session_store.make_storage(redis, secret="s", max_age=60, secure=False)
    key = "a-" + "0" * 32
    await redis.set(store.redis_key(key), '{"created": 1, "session": {"user_id": "u"}}')
    signed = store._sign(key)
    cached = session_store._signed.cache_info().currsize
    # Long cookies of every form: none names a session, none is signed to be
    # checked (the signatures kept would otherwise hold whatever a client sends).
    for long_key in ("x" * 5000, key + "0" * 200):
        rightly_signed = session_store._signed.__wrapped__(b"s", long_key)  # (not kept)
        for cookie in (f"{long_key}.sig", rightly_signed):
            request = make_mocked_request("GET", "/", headers={"Cookie": f"chat_session={cookie}"})
            session = await store.load_session(request)
            assert session.new and session.identity is None
            assert store.guess(request) is None and not store.anonymous_cookie(request)
    assert session_store._signed.cache_info().currsize == cached
    request = make_mocked_request("GET", "/", headers={"Cookie": f"chat_session={signed}"})
    assert (await store.load_session(request)).identity == key
