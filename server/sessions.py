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
import unicodedata
from typing import Any

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_session.redis_storage import RedisStorage
from redis.asyncio.client import Pipeline

from . import keys
from .addresses import budget_key
from .errors import BadRequest, RateLimited
from .ratelimit import Budget

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
        # aiohttp-session (2.12) accepts only a redis.asyncio.Redis; a Redis
        # Cluster client has the same GET and SET, so it is put in place
        # after the check, which is handed an unconnected stand-in.
        super().__init__(redis if isinstance(redis, aioredis.Redis) else aioredis.Redis(), **kwargs)
        self._redis = redis
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

    def queue_save(
        self, pipe: Pipeline, response: web.StreamResponse, session: aiohttp_session.Session
    ) -> str:
        """Put the session's cookie on ``response`` and its write on ``pipe``,
        so that saving it costs no round trip of its own; its Redis key."""
        key = session.identity
        if key is None:
            key = self._key_factory()
            self.save_cookie(response, key, max_age=session.max_age)
        else:
            key = str(key)
            self.save_cookie(response, "" if session.empty else key, max_age=session.max_age)
        redis_key = self.cookie_name + "_" + key
        pipe.set(redis_key, self._encoder(self._get_session_data(session)), ex=session.max_age)
        return redis_key

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: aiohttp_session.Session
    ) -> None:
        pipe = self._redis.pipeline(transaction=False)
        self.queue_save(pipe, response, session)
        await pipe.execute()


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
    is_new: bool  # the session was just created: the client has no cookie yet
    unsaved: bool = False  # the session changed (new, or used for the first time)


# A session nobody uses again is gone within the hour; one that comes back
# lives session_max_age_s from then on.
NEW_SESSION_TTL_S = 3600
USED = "used"


def new_session_charge(request: web.Request) -> tuple[Budget, str]:
    """What a new session costs: one from its client address's budget of new sessions."""
    return request.app[keys.BUDGETS].address_sessions, budget_key(request.remote)


def too_many_sessions(retry_after: float) -> RateLimited:
    return RateLimited(
        "too many new sessions from this address; keep the session cookie",
        retry_after=retry_after,
    )


async def current_user(request: web.Request, *, charge: bool = True) -> User:
    """The caller's identity, creating the session on first contact.

    A new session costs its client's address one from its budget of new
    sessions (:func:`new_session_charge`): identity is free to make, and
    every per-user limit would otherwise be one cookie-less request away.
    With ``charge=False`` the caller charges it, in its own round trip to
    Redis, and refuses the request if the budget does.
    """
    session = await aiohttp_session.get_session(request)
    user_id = session.get("user_id")
    name = session.get("name")
    if isinstance(user_id, str) and isinstance(name, str):
        if session.get(USED):
            return User(user_id, name, is_new=False)
        session[USED] = True  # saved with its full age
        return User(user_id, name, is_new=False, unsaved=True)
    if charge:
        wait = await request.app[keys.RATE_LIMITER].take(new_session_charge(request))
        if wait:
            raise too_many_sessions(wait)
    session["user_id"] = user_id = new_user_id()
    session["name"] = name = friendly_name()
    session.max_age = NEW_SESSION_TTL_S
    return User(user_id, name, is_new=True, unsaved=True)


async def queue_save(request: web.Request, response: web.StreamResponse, pipe: Pipeline) -> str:
    """Save a changed session on a streaming response before it is prepared,
    with the commands on ``pipe``; the session's Redis key.

    aiohttp-session's middleware saves sessions only for plain responses, so
    a client whose first request is an SSE or WebSocket stream would
    otherwise get a different identity on every connection.
    """
    session = await aiohttp_session.get_session(request)
    storage: SignedRedisStorage = request[aiohttp_session.STORAGE_KEY]
    return storage.queue_save(pipe, response, session)


# Display names are shown to everyone, so they must look like what they are.
# Refused anywhere in a name: control characters, format characters (bidi
# controls such as U+202E reorder the text around them; zero-width ones hide
# inside a name that then looks like another), line and paragraph separators,
# unassigned code points, private use and lone surrogates (a JSON "\ud800").
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character (bidi control, zero-width or similar)",
    "Cn": "an unassigned code point",
    "Co": "a private-use character",
    "Cs": "a lone surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
# Letters by category, invisible by design (Unicode's Default_Ignorable_Code_Point):
# the Hangul fillers make a name that shows as nothing.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
# Combining marks allowed on one base character, counted as if decomposed
# (NFD), so that "\u1ec7" (e with two marks) counts the same as e + two marks.
# Room for real orthographies (Vietnamese stacks two; a Devanagari letter can
# take a nukta, a vowel sign and a nasal; a pointed Hebrew letter three), not
# for marks piled up until they cover the lines around the name.
NAME_MAX_MARKS = 3


def clean_name(value: Any) -> str:
    """A display name as it is stored and shown, or BadRequest saying what is wrong.

    NFC-normalised; runs of spaces become one and the ends are trimmed;
    1-32 characters (code points) counted after both.
    """
    if not isinstance(value, str):
        raise BadRequest("name must be a string")
    name = unicodedata.normalize("NFC", value)
    for char in name:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is None and char in _INVISIBLE_LETTERS:
            what = "an invisible filler character"
        if what is not None:
            raise BadRequest(f"name must not contain {what} (U+{ord(char):04X})")
    name = " ".join(name.split())  # only space separators (Zs) are left to split on
    if not 1 <= len(name) <= NAME_MAX_CHARS:
        raise BadRequest(
            f"name must be 1-{NAME_MAX_CHARS} characters after NFC normalisation and trimming"
        )
    marks = 0
    decomposed = unicodedata.normalize("NFD", name)
    for index, char in enumerate(decomposed):
        if not unicodedata.category(char).startswith("M"):
            marks = 0
            continue
        if index == 0 or decomposed[index - 1] == " ":
            raise BadRequest(
                f"name has a combining mark with no base character (U+{ord(char):04X})"
            )
        marks += 1
        if marks > NAME_MAX_MARKS:
            raise BadRequest(
                f"name must not pile more than {NAME_MAX_MARKS} combining marks on one character"
            )
    return name


async def rename(request: web.Request, name: str) -> User:
    session = await aiohttp_session.get_session(request)
    user = await current_user(request)
    session["name"] = name
    return dataclasses.replace(user, name=name)
