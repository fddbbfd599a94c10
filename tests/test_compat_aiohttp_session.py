"""Canaries for :mod:`server.store.aiohttp_session_compat`: where aiohttp-session's
Redis store keeps a session, and what its middleware leaves on a request,
checked with a real app and a real Redis (on both event loops). Each fails
when aiohttp-session changes under it."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import aiohttp_session
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_session.redis_storage import RedisStorage

from server.store.aiohttp_session_compat import CHECKED_ON, RedisStorageBase, storage_of
from server.store.session_store import SignedRedisStorage

from .support import checked_release, shadowed_names


def test_aiohttp_session_is_a_release_these_were_checked_on() -> None:
    """A new aiohttp-session: run these canaries, read the module's list again, then add it."""
    assert checked_release(version("aiohttp-session"), CHECKED_ON), version("aiohttp-session")


async def test_the_signed_store_shadows_no_name_of_aiohttp_sessions_store() -> None:
    """An attribute of ours named as one of aiohttp-session's would silently take its place."""
    redis = aioredis.Redis()  # (never connected)
    try:
        assert not shadowed_names(SignedRedisStorage, RedisStorage(redis))
        assert not shadowed_names(RedisStorageBase, RedisStorage(redis), overrides={"_redis"})
    finally:
        await redis.aclose()


async def test_a_session_written_through_the_base_is_the_one_aiohttp_session_reads(
    redis_url: str, aiohttp_client: Callable[..., Any]
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    storage = RedisStorageBase(redis, cookie_name="canary", max_age=60)

    async def write(request: web.Request) -> web.Response:
        # The store the middleware put on the request is this one.
        assert storage_of(request) is storage
        session = aiohttp_session.Session(
            None, data={"created": int(time.time()), "session": {}}, new=True, max_age=60
        )
        session["user_id"] = "u-1"
        key = storage.new_key()
        await storage.redis.set(storage.redis_key(key), storage.encode(session), ex=60)
        response = web.Response(text=key)
        storage.save_cookie(response, key, max_age=60)
        return response

    async def read(request: web.Request) -> web.Response:
        session = await aiohttp_session.get_session(request)
        return web.json_response({"new": session.new, "user_id": session.get("user_id")})

    app = web.Application(middlewares=[aiohttp_session.session_middleware(storage)])
    app.router.add_post("/write", write)
    app.router.add_get("/read", read)
    client = await aiohttp_client(app)
    try:
        written = await client.post("/write")
        assert written.status == 200
        key = await written.text()
        assert await redis.exists(f"canary_{key}")  # <cookie_name>_<key>
        answer = await client.get("/read")
        assert await answer.json() == {"new": False, "user_id": "u-1"}
        # What the store wrote reads back through the base as aiohttp-session reads it.
        raw = await redis.get(storage.redis_key(key))
        assert storage.decode(raw.decode())["session"] == {"user_id": "u-1"}
    finally:
        await redis.aclose()


def test_the_middleware_keeps_its_state_under_string_request_keys() -> None:
    """Why the tests ignore ``web.NotAppKeyWarning`` (``pyproject.toml``; aiohttp
    warns once a key): once these are ``web.RequestKey``s, the filter can go."""
    assert isinstance(aiohttp_session.STORAGE_KEY, str)
    assert isinstance(aiohttp_session.SESSION_KEY, str)


async def test_a_cluster_client_is_refused_by_aiohttp_session_and_taken_by_the_base() -> None:
    cluster = aioredis.RedisCluster(host="127.0.0.1", port=1)  # (never connected)
    try:
        with pytest.raises(TypeError):
            RedisStorage(cluster)  # type: ignore[arg-type]
        storage = RedisStorageBase(cluster)  # type: ignore[arg-type]
        # What aiohttp-session's load_session reads with.
        assert storage._redis is cluster and storage.redis is cluster
    finally:
        await cluster.aclose()
