"""Browser identity: a server-side session in Redis holding a random user id and a name.

The cookie holds only an opaque key, signed with the session secret so that
a forged or guessed cookie is rejected before Redis is asked. The user id is
made here and never taken from the client.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import random
import re
import secrets
from typing import Any

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_session.redis_storage import RedisStorage

from .errors import BadRequest

COOKIE_NAME = "chat_session"
NAME_MAX_CHARS = 32

_ADJECTIVES = [
    "Amber",
    "Brave",
    "Calm",
    "Clever",
    "Cosmic",
    "Curious",
    "Daring",
    "Eager",
    "Fuzzy",
    "Gentle",
    "Happy",
    "Jolly",
    "Kind",
    "Lively",
    "Lucky",
    "Mellow",
    "Merry",
    "Nimble",
    "Quiet",
    "Rapid",
    "Shiny",
    "Sunny",
    "Swift",
    "Witty",
]
_ANIMALS = [
    "Badger",
    "Beaver",
    "Falcon",
    "Ferret",
    "Fox",
    "Gecko",
    "Heron",
    "Koala",
    "Lemur",
    "Lynx",
    "Marten",
    "Otter",
    "Owl",
    "Panda",
    "Puffin",
    "Quokka",
    "Raven",
    "Seal",
    "Sparrow",
    "Tapir",
    "Tiger",
    "Walrus",
    "Wombat",
    "Yak",
]

USER_ID_RE = re.compile(r"u-[0-9a-f]{1,64}")


def friendly_name() -> str:
    rng = random.SystemRandom()
    return f"{rng.choice(_ADJECTIVES)} {rng.choice(_ANIMALS)} {rng.randrange(10, 100)}"


def new_user_id() -> str:
    return "u-" + secrets.token_hex(12)  # 96 random bits


class SignedRedisStorage(RedisStorage):
    """aiohttp-session's Redis store, with the cookie key signed by the session secret."""

    def __init__(self, redis: aioredis.Redis, secret: str, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self._secret = secret.encode()

    def _sign(self, key: str) -> str:
        mac = hmac.new(self._secret, key.encode(), hashlib.sha256).digest()[:16]
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


@dataclasses.dataclass(frozen=True)
class User:
    user_id: str
    name: str
    is_new: bool  # the session was just created and still needs saving


async def current_user(request: web.Request) -> User:
    """The caller's identity, creating the session on first contact."""
    session = await aiohttp_session.get_session(request)
    user_id = session.get("user_id")
    name = session.get("name")
    if isinstance(user_id, str) and isinstance(name, str):
        return User(user_id, name, is_new=False)
    session["user_id"] = user_id = new_user_id()
    session["name"] = name = friendly_name()
    return User(user_id, name, is_new=True)


async def save_for_stream(request: web.Request, response: web.StreamResponse) -> None:
    """Save a new session on a streaming response before it is prepared.

    aiohttp-session's middleware saves sessions only for plain responses, so
    a client whose first request is an SSE or WebSocket stream would
    otherwise get a different identity on every connection.
    """
    session = await aiohttp_session.get_session(request)
    storage = request[aiohttp_session.STORAGE_KEY]
    await storage.save_session(request, response, session)


def clean_name(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("name must be a string")
    name = " ".join(value.split())
    if not 1 <= len(name) <= NAME_MAX_CHARS:
        raise BadRequest(f"name must be 1-{NAME_MAX_CHARS} characters after trimming")
    if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise BadRequest("name must not contain control characters")
    return name


async def rename(request: web.Request, name: str) -> User:
    session = await aiohttp_session.get_session(request)
    user = await current_user(request)
    session["name"] = name
    return User(user.user_id, name, is_new=user.is_new)
