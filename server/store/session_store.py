"""Where sessions are kept: aiohttp-session's Redis store, with signed cookies.

The cookie holds only an opaque key, signed with the session secret so that
a forged or guessed cookie is rejected before Redis is asked.

A session holds the user id. The user's display name has one home, a Redis
key of the user's own (:func:`server.store.keys.name_key`), where presence
finds it too: it is written with the session when the session is new, and
lives as long as the session (its expiry follows each save).

A session made for an anonymous visitor has a key of its own kind
(:data:`ANONYMOUS_KEY_PREFIX`): it never holds a sign-in, since signing in always
makes a session of its own (a key known before sign-in does not become the user's),
so a signed cookie with such a key names an anonymous session, or one that ended,
with no need to ask Redis (:meth:`SignedRedisStorage.anonymous_cookie`).

Each worker remembers the sessions it read for :data:`GUESS_TTL_S`, for the writes
that can confirm them at no cost (:meth:`SignedRedisStorage.guess`): a post reads
its session again in the round trip that charges its budgets, and is made again,
from a fresh read, when it changed meanwhile (signed out, or signed in elsewhere).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hmac
import itertools
import re
import time
from typing import Any, cast

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import hdrs, web
from redis.asyncio.client import Pipeline

from .aiohttp_session_compat import RedisStorageBase, drop_session, storage_of, use_session
from .batch import Batch, Reply
from .keys import name_key

COOKIE_NAME = "chat_session"
COOKIE_MAX = 128  # characters of a cookie worth checking (a signed key is under 64)
# The session field that holds a sign-in (see server.web.signin).
SIGN_IN_FIELD = "auth"
# How the key of a session made without a sign-in starts (others are hex).
ANONYMOUS_KEY_PREFIX = "a-"
# The display name of a session made by this request, written when it is saved.
NEW_NAME = web.RequestKey("new_name", str)

GUESS_TTL_S = 10.0  # how long a worker remembers a session it read
GUESSES_MAX = 10_000  # sessions a worker remembers at most (the oldest go first)


class SessionChanged(Exception):
    """The session a request was guessed to have is no longer the one in Redis."""


@dataclasses.dataclass(slots=True)
class Guess:
    """A session as this worker last read it, not yet confirmed: the request's
    session is taken to be it until a round trip reads it again (:meth:`confirm`)."""

    key: str  # where it is in Redis
    stored: str  # what was there
    confirmed: bool = False

    def confirm(self, batch: Batch) -> Reply[bool]:
        """Read the session again in ``batch``: whether it is still what was guessed."""
        return batch.commands(lambda pipe: pipe.get(self.key), self._same)

    def _same(self, replies: list[Any]) -> bool:
        value = replies[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        self.confirmed = value == self.stored
        return self.confirmed


# A request whose session is a guess, and the guess.
GUESSED = web.RequestKey("session_guess", Guess)


@dataclasses.dataclass(frozen=True, slots=True)
class _Remembered:
    until: float  # time.monotonic()
    key: str  # the session's key (the cookie without its signature)
    stored: str
    data: aiohttp_session.SessionData


# Signed several times a request (checked, remembered, set again); only keys of short cookies.
@functools.lru_cache(maxsize=4096)
def _signed(secret: bytes, key: str) -> str:
    mac = hmac.digest(secret, key.encode(), "sha256")[:16]
    return key + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


class SignedRedisStorage(RedisStorageBase):
    """aiohttp-session's Redis store, with the cookie key signed by the session secret."""

    def __init__(self, redis: aioredis.Redis, secret: str, **kwargs: Any) -> None:
        super().__init__(redis, **kwargs)
        self._secret = secret.encode()
        self._remembered: dict[str, _Remembered] = {}  # by signed cookie, oldest read first

    def _sign(self, key: str) -> str:
        return _signed(self._secret, key)

    def load_cookie(self, request: web.Request) -> str | None:
        cookie = super().load_cookie(request)
        # Any cookie at all (garbage, planted, not ASCII) just means "no session".
        if not cookie or len(cookie) > COOKIE_MAX or not cookie.isascii() or "." not in cookie:
            return None
        key = cookie.rsplit(".", 1)[0]
        return key if hmac.compare_digest(self._sign(key), cookie) else None

    def _decoded(self, raw: str | bytes | None) -> tuple[str | None, Any]:
        """A stored session as text, and what it decodes to (None when it does not)."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            return raw, self.decode(raw) if raw is not None else None
        except ValueError:
            return raw, None

    async def load_session(self, request: web.Request) -> aiohttp_session.Session:
        """The request's cookie's session, read from Redis (and remembered); else a new one."""
        key = self.load_cookie(request)
        raw = None if key is None else await self._read(key)
        raw, data = self._decoded(raw)
        if key is None or raw is None:
            return aiohttp_session.Session(None, data=None, new=True, max_age=self.max_age)
        if isinstance(data, dict):
            remembered = _Remembered(0.0, key, raw, cast(aiohttp_session.SessionData, data))
            self._remember(self._sign(key), remembered)
        return aiohttp_session.Session(key, data=data, new=False, max_age=self.max_age)

    async def _read(self, key: str) -> Any:
        """The session of ``key`` as stored, or None. In a batch: sessions read in one
        turn of the loop (clients back after a reload) share one round trip."""
        batch, redis_key = Batch(self.redis), self.redis_key(key)
        stored = batch.commands(lambda pipe: pipe.get(redis_key), lambda replies: replies[0])
        await batch.run()
        return stored.value

    def guess(self, request: web.Request) -> aiohttp_session.Session | None:
        """The request's session as this worker read it last, when that was
        within :data:`GUESS_TTL_S`: made the request's session, and its
        :class:`Guess` put on the request (:data:`GUESSED`). None: not
        known here (then the session is read as usual)."""
        cookie = _plain_cookie(request.headers.get(hdrs.COOKIE, ""), self.cookie_name)
        remembered = self._remembered.get(cookie) if cookie else None
        if remembered is None:
            return None
        if remembered.until <= time.monotonic():
            self._forget(cookie)
            return None
        session = aiohttp_session.Session(
            remembered.key, data=remembered.data, new=False, max_age=self.max_age
        )
        use_session(request, session)
        request[GUESSED] = Guess(self.redis_key(remembered.key), remembered.stored)
        return session

    def anonymous_cookie(self, request: web.Request) -> bool:
        """Whether the request's session cookie is signed and names a session
        made without a sign-in, which never holds one: the session of an
        anonymous visitor, or one that has ended since. Redis is not asked."""
        cookie = _plain_cookie(request.headers.get(hdrs.COOKIE, ""), self.cookie_name)
        if cookie is None or not cookie.startswith(ANONYMOUS_KEY_PREFIX):
            return False
        key = cookie.rpartition(".")[0]
        return bool(key) and hmac.compare_digest(self._sign(key), cookie)

    def guessed_wrong(self, request: web.Request) -> None:
        """Forget the request's guessed session, here and on the request:
        it is read again when next asked for."""
        guess = request.pop(GUESSED, None)
        drop_session(request)
        if guess is not None:
            self._forget(_plain_cookie(request.headers.get(hdrs.COOKIE, ""), self.cookie_name))

    def _remember(self, cookie: str, remembered: _Remembered) -> None:
        entries = self._remembered
        now = time.monotonic()
        entries.pop(cookie, None)
        entries[cookie] = dataclasses.replace(remembered, until=now + GUESS_TTL_S)
        # The oldest first: drop those past their time, and those over the most.
        for oldest in list(itertools.islice(entries, 8)):
            if entries[oldest].until > now and len(entries) <= GUESSES_MAX:
                break
            del entries[oldest]

    def _forget(self, cookie: str | None) -> None:
        if cookie:
            self._remembered.pop(cookie, None)

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
            if SIGN_IN_FIELD not in session:
                key = ANONYMOUS_KEY_PREFIX + key
            self.save_cookie(response, key, max_age=session.max_age)
        else:
            key = str(key)
            self.save_cookie(response, "" if session.empty else key, max_age=session.max_age)
            self._forget(self._sign(key))  # (changed: read it again)
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
        _, data = self._decoded(await self._read(key))
        session = data.get("session") if isinstance(data, dict) else None
        return session if isinstance(session, dict) else {}

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: aiohttp_session.Session
    ) -> None:
        batch = Batch(self.redis)
        self.queue_save(batch, response, session, request.get(NEW_NAME))
        await batch.run()


_PLAIN_VALUE = re.compile(rf"[A-Za-z0-9._-]{{1,{COOKIE_MAX}}}")


def _plain_cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, when it is there once and plain
    (a signed key), else None; without aiohttp's parse of every cookie (morsels and all)."""
    prefix = name + "="
    found = None
    for part in header.split(";"):
        pair = part.strip()
        if pair.startswith(prefix):
            if found is not None:
                return None
            found = pair[len(prefix) :]
    return found if found and _PLAIN_VALUE.fullmatch(found) else None


def guess_session(request: web.Request) -> None:
    """Take the request's session to be what this worker read last, if it
    read it lately (:meth:`SignedRedisStorage.guess`)."""
    cast(SignedRedisStorage, storage_of(request)).guess(request)


def guessed_wrong(request: web.Request) -> bool:
    """Whether the request's session was guessed and that was not confirmed
    (then it is forgotten: the next ``get_session`` reads it afresh)."""
    guess = request.get(GUESSED)
    if guess is None or guess.confirmed:
        return False
    cast(SignedRedisStorage, storage_of(request)).guessed_wrong(request)
    return True


def make_storage(
    redis: aioredis.Redis, *, secret: str, max_age: int, secure: bool
) -> SignedRedisStorage:
    options = {"httponly": True, "samesite": "Lax", "secure": secure or None}
    return SignedRedisStorage(redis, secret, cookie_name=COOKIE_NAME, max_age=max_age, **options)
