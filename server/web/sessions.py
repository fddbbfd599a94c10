"""Browser identity: a server-side session holding a random user id.

The user id is made here and never taken from the client; the session is
kept in Redis (:mod:`server.store.session_store`). The user's display name lives
in a Redis key of its own, read where it is needed (:meth:`Sessions.display_name`;
a post reads it in the round trip that charges its budgets).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import cast

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web

from ..core.errors import Forbidden, NotFound, RateLimited, Unauthorized
from ..core.identity import ANONYMOUS_ID_RE, Identity, Role
from ..core.names import friendly_name
from ..store.aiohttp_session_compat import storage_of
from ..store.batch import Batch
from ..store.keys import name_key
from ..store.moderation_store import membership
from ..store.ratelimit import Budget, Budgets, RateLimiter
from ..store.session_store import GUESSED, NEW_NAME, Guess, SignedRedisStorage, guess_session
from .addresses import owner_of
from .signin import (
    AUTH,
    SignIn,
    bearer,
    check_may_post,
    is_private,
    room_role,
    session_identity,
    session_record,
    session_tag,
)

USER_ID_RE = ANONYMOUS_ID_RE


def new_user_id() -> str:
    return "u-" + secrets.token_hex(12)  # 96 random bits


@dataclasses.dataclass(frozen=True)
class User:
    user_id: str
    name: str | None  # known without asking Redis only for a new session
    is_new: bool  # the session was just created: the client has no cookie yet
    unsaved: bool = False  # the session changed (new, or used for the first time)
    # Signed in with a token (the name, when it has one, is the token's).
    identity: Identity | None = None
    guess: Guess | None = None  # the session as this worker read it last (see current_user)

    @property
    def token_name(self) -> str | None:
        """The name to post with when it is not read from the user's name key:
        the token's, which the user cannot change."""
        return self.name if self.identity is not None else None


# A session nobody uses again is gone within the hour; one that comes back
# lives session_max_age_s from then on, counted again from its first use
# each day (aiohttp-session saves a session only when it changes: without
# this, an active user would become someone new at session_max_age_s).
NEW_SESSION_TTL_S = 3600
USED = "used"  # when the session was last saved for being used (Unix time)
RESAVE_AFTER_S = 86400


def too_many_sessions(retry_after: float) -> RateLimited:
    return RateLimited(
        "too many new sessions from this address; keep the session cookie",
        retry_after=retry_after,
    )


async def keep_name(
    redis: aioredis.Redis, user_id: str, name: str | None, ttl_s: int | None = None
) -> str:
    """Keep ``name`` (or a fresh one) as the user's, unless one was kept
    meanwhile; the user's name."""
    name = name or friendly_name()
    key = name_key(user_id)
    if await redis.set(key, name, ex=ttl_s or NEW_SESSION_TTL_S, nx=True):
        return name
    return str(await redis.get(key) or name)


async def queue_save(request: web.Request, response: web.StreamResponse, batch: Batch) -> None:
    """Save a changed session on a streaming response before it is prepared,
    with the commands of ``batch``.

    aiohttp-session's middleware saves sessions only for plain responses, so
    a client whose first request is an SSE or WebSocket stream would
    otherwise get a different identity on every connection.
    """
    session = await aiohttp_session.get_session(request)
    storage = cast(SignedRedisStorage, storage_of(request))
    storage.queue_save(batch, response, session, request.get(NEW_NAME))


class Sessions:
    """The caller's identity, with what it takes: Redis (the display name)
    and the budgets a new session and a rename are charged to."""

    __slots__ = ("budgets", "limiter", "redis", "sign_in")

    def __init__(
        self, redis: aioredis.Redis, limiter: RateLimiter, budgets: Budgets, sign_in: SignIn
    ) -> None:
        self.redis = redis
        self.limiter = limiter
        self.budgets = budgets
        self.sign_in = sign_in  # the application's tokens

    def check_anonymous(self) -> None:
        """Refuse an anonymous caller where sign-in is needed (``anonymous = "none"``)."""
        if self.sign_in.config.anonymous == "none":
            raise Unauthorized("sign in: send Authorization: Bearer <token>, or POST /api/auth")

    def check_may_write(self, user: User) -> None:
        """Refuse a rename by an anonymous caller where anonymous callers
        only read (``anonymous = "read"``; a message: :meth:`check_may_post`)."""
        if user.identity is None and self.sign_in.config.anonymous != "write":
            raise Forbidden("anonymous visitors may only read here: sign in to write")

    def may_rename(self, user: User) -> bool:
        """Whether :meth:`rename` lets the user change its name: not when the
        name is its token's, nor for an anonymous caller who only reads."""
        return user.token_name is None and (
            user.identity is not None or self.sign_in.config.anonymous == "write"
        )

    async def check_reader(self, request: web.Request, room: str) -> None:
        """Refuse a read by a caller who may not read ``room`` (where sign-in
        is needed, or a private room it has no grant for), with no session
        made for it."""
        config = self.sign_in.config
        if config.anonymous == "none" or is_private(config, room):
            user = await self.current_user(request, charge=False)
            await self.role_in(user, room)

    async def role_in(self, user: User, room: str) -> Role:
        """The user's role in ``room``; NotFound when the room is private to it.

        A private room its token grants nothing in is asked of the room's
        memberships (a round trip only then)."""
        try:
            return room_role(self.sign_in.config, user.identity, room)
        except NotFound:
            role = await membership(self.redis, room, user.user_id)
            if role is None:
                raise
            return Role.parse(role)

    async def check_may_post(self, user: User, room: str) -> None:
        """Refuse a message the user may not post in ``room`` (NotFound, Forbidden)."""
        check_may_post(await self.role_in(user, room), user.identity)

    def new_session_charge(self, request: web.Request) -> tuple[Budget, str]:
        """What a new session costs: one from its client address's budget of new sessions."""
        return self.budgets.address_sessions, owner_of(request.remote)

    async def current_user(
        self, request: web.Request, *, charge: bool = True, guess: bool = False
    ) -> User:
        """The caller's identity, creating the session on first contact.

        A new session costs its client's address one from its budget of new
        sessions (:meth:`new_session_charge`): identity is free to make, and
        every per-user limit would otherwise be one cookie-less request away.
        With ``charge=False`` the caller charges it, in its own round trip to
        Redis, and refuses the request if the budget does.
        ``guess``: a session this worker read lately may be taken as it was
        then (:meth:`SignedRedisStorage.guess`), for a caller that confirms it.
        """
        identity = bearer(request)
        if identity is not None:  # a program: no cookie, no session
            return User(identity.user_id, identity.name, is_new=False, identity=identity)
        if guess:
            guess_session(request)
        session = await aiohttp_session.get_session(request)
        user_id = session.get("user_id")
        if isinstance(user_id, str):
            leeway_s = self.sign_in.config.auth_leeway_s
            signed_in = session_identity(user_id, session.get(AUTH), leeway_s)
            if signed_in is None:
                self.check_anonymous()
            name = None if signed_in is None else signed_in.name
            used = session.get(USED)
            now = int(time.time())
            user = User(user_id, name, False, identity=signed_in, guess=request.get(GUESSED))
            # (True: a session saved before the time was kept.)
            if isinstance(used, int) and not isinstance(used, bool) and now - used < RESAVE_AFTER_S:
                return user
            session[USED] = now  # saved with its full age (and so is the name)
            return dataclasses.replace(user, unsaved=True)
        self.check_anonymous()
        if charge:
            verdict = await self.limiter.take(self.new_session_charge(request))
            if verdict.wait:
                raise too_many_sessions(verdict.wait)
        session["user_id"] = user_id = new_user_id()
        request[NEW_NAME] = name = friendly_name()
        session.max_age = NEW_SESSION_TTL_S
        return User(user_id, name, is_new=True, unsaved=True)

    async def display_name(self, request: web.Request, user: User) -> str:
        """The user's display name, from its Redis key (or the new session's).

        A name that is not there (a session from before names had one home, or
        one whose key Redis lost) is taken from the old session field or made
        afresh, and kept again.
        """
        if user.name is not None:
            return user.name
        redis = self.redis
        name = await redis.get(name_key(user.user_id))
        if name is not None:
            return str(name)
        kept = None
        if user.identity is None:
            session = await aiohttp_session.get_session(request)
            kept = session.get("name")
        return await keep_name(redis, user.user_id, kept if isinstance(kept, str) else None)

    async def rename(self, request: web.Request, name: str) -> User:
        """The caller, renamed (the caller keeps the name in its Redis key).

        A rename is announced to every room the user is in, so it costs what a
        message costs, from the user's budget and the client address's (and a
        new session's from the address's budget of those); refused, it changes
        nothing and writes nothing.
        """
        user = await self.current_user(request, charge=False)
        self.check_may_write(user)
        if user.token_name is not None:
            raise Forbidden("the name comes from the sign-in token")
        budgets = self.budgets
        charges = [
            (budgets.messages, user.user_id),
            (budgets.address_messages, owner_of(request.remote)),
        ]
        if user.is_new:
            charges.append(self.new_session_charge(request))
        verdict = await self.limiter.take(*charges)
        if verdict.wait:
            if "address_sessions" in verdict.refused:
                raise too_many_sessions(verdict.wait)
            raise RateLimited("too many renames and messages; slow down", retry_after=verdict.wait)
        if user.is_new:
            request[NEW_NAME] = name  # what the new session's save writes
        if user.identity is None:
            session = await aiohttp_session.get_session(request)
            session.pop("name", None)  # a session from before names had one home
        return dataclasses.replace(user, name=name)

    async def sign_in_session(self, request: web.Request, identity: Identity) -> str:
        """Bind ``identity`` to the caller's session (a new one, when the
        session was someone else's: a session key known before sign-in
        does not become the user's); the user's name.

        The session keeps the user id, the name, the expiry and the grants,
        never the token; the cookie stays an opaque key. A newer token for
        the same user refreshes the session in place.
        """
        session = await aiohttp_session.get_session(request)
        if session.new:
            verdict = await self.limiter.take(self.new_session_charge(request))
            if verdict.wait:
                raise too_many_sessions(verdict.wait)
        elif session.get("user_id") != identity.user_id:
            session = await aiohttp_session.new_session(request)
        session["user_id"] = identity.user_id
        session[AUTH] = session_record(identity)
        session[USED] = int(time.time())
        name = identity.name
        if name is None:
            user = User(identity.user_id, None, is_new=False, identity=identity)
            name = await self.display_name(request, user)
        request[NEW_NAME] = name  # (saved with the session, for its lifetime)
        return name

    async def sign_out(self, request: web.Request) -> tuple[str, str] | None:
        """End the caller's session, if it has one: it is deleted, its cookie
        cleared. The user id and session tag whose streams end, when it was
        signed in."""
        session = await aiohttp_session.get_session(request)
        if session.new:
            return None
        user_id, signed_in = session.get("user_id"), session.get(AUTH) is not None
        session.invalidate()
        if not signed_in or not isinstance(user_id, str) or session.identity is None:
            return None
        return user_id, session_tag(str(session.identity))
