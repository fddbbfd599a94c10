"""Where sessions are kept: aiohttp-session's Redis store, with signed cookies.

The cookie holds only an opaque key, signed with the session secret so that
a forged or guessed cookie is rejected before Redis is asked.

A session holds the user id. The user's display name has one home, a Redis
key of the user's own (:func:`server.store.keys.name_key`), where presence
finds it too: it is written with the session when the session is new, and
lives as long as the session (its expiry follows each save).
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.client import Pipeline

from .aiohttp_session_compat import RedisStorageBase
from .batch import Batch
from .keys import name_key

COOKIE_NAME = "chat_session"
# The display name of a session made by this request, written when it is saved.
NEW_NAME = web.RequestKey("new_name", str)


class SignedRedisStorage(RedisStorageBase):
    """aiohttp-session's Redis store, with the cookie key signed by the session secret."""

    def __init__(self, redis: aioredis.Redis, secret: str, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self._secret = secret.encode()

    def _sign(self, key: str) -> str:
        mac = hmac.digest(self._secret, key.encode(), "sha256")[:16]
        return key + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def load_cookie(self, request: web.Request) -> str | None:
        cookie = super().load_cookie(request)
        # Any cookie at all (garbage, planted, not ASCII) just means "no
        # session": a fresh one is made.
        if not cookie or not cookie.isascii() or "." not in cookie:
            return None
        key = cookie.rsplit(".", 1)[0]
        return key if hmac.compare_digest(self._sign(key), cookie) else None

    def save_cookie(
        self, response: web.StreamResponse, cookie_data: str, *, max_age: int | None = None
    ) -> None:
        super().save_cookie(
            response, self._sign(cookie_data) if cookie_data else "", max_age=max_age
        )

    def queue_save(
        self,
        batch: Batch,
        response: web.StreamResponse,
        session: aiohttp_session.Session,
        new_name: str | None = None,
    ) -> None:
        """Put the session's cookie on ``response`` and its write in ``batch``,
        so that saving it costs no round trip of its own.

        The user's name goes with it: ``new_name`` for a new session, else
        its expiry moves with the session's."""
        key = session.identity
        if key is None:
            key = self.new_key()
            self.save_cookie(response, key, max_age=session.max_age)
        else:
            key = str(key)
            self.save_cookie(response, "" if session.empty else key, max_age=session.max_age)
        data = self.encode(session)
        user_id = session.get("user_id")
        named = isinstance(user_id, str) and not session.empty and session.max_age is not None
        name = name_key(str(user_id))

        def add(pipe: Pipeline) -> None:
            # (Plain commands: redis-py's own methods weigh their many
            # options on every call, a tenth of what a new stream costs.)
            if session.empty:  # (invalidated: signed out)
                pipe.execute_command("DEL", self.redis_key(key))
                return
            expiry = () if session.max_age is None else ("EX", session.max_age)
            pipe.execute_command("SET", self.redis_key(key), data, *expiry)
            if named and new_name is not None:
                pipe.execute_command("SET", name, new_name, *expiry)
            elif named:
                pipe.execute_command("EXPIRE", name, session.max_age)

        batch.commands(add, list)

    async def stored(self, key: str) -> dict[str, Any]:
        """What the session of ``key`` holds in Redis now (empty when it is gone)."""
        raw = await self.redis.get(self.redis_key(key))
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            data = self.decode(raw) if raw is not None else None
        except ValueError:
            data = None
        session = data.get("session") if isinstance(data, dict) else None
        return session if isinstance(session, dict) else {}

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: aiohttp_session.Session
    ) -> None:
        batch = Batch(self.redis)
        self.queue_save(batch, response, session, request.get(NEW_NAME))
        await batch.run()


def make_storage(
    redis: aioredis.Redis, *, secret: str, max_age: int, secure: bool
) -> SignedRedisStorage:
    return SignedRedisStorage(
        redis,
        secret,
        cookie_name=COOKIE_NAME,
        max_age=max_age,
        httponly=True,
        samesite="Lax",
        secure=secure or None,
    )
