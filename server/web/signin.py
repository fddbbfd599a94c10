"""Who signed in: the sign-in token verifier of the app, opened for its
lifetime, and the identity a request's ``Authorization: Bearer`` proves.

A token is read from the ``Authorization`` header only (never from the query
string, which ends up in logs and browser history), verified once per
request (a stream's, once for its whole life), and never logged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp_session
from aiohttp import hdrs, web

from ..common.config import Config
from ..core.errors import Forbidden, NotFound, TokenExpired
from ..core.identity import Expiry, Identity, Role, parse_grants
from ..store.session_store import SIGN_IN_FIELD, SignedRedisStorage
from .tokens import TokenVerifier, open_verifier

# The identity the request's Bearer token proved, or None: verified once.
BEARER: web.RequestKey[Identity | None] = web.RequestKey("bearer")
API_PREFIX = "/api/"
# A signed-in session's record of its token (never the token itself): the
# name it gave, when it expires, its grants.
AUTH = SIGN_IN_FIELD


class SignIn:
    """Sign-in with the application's tokens: the verifier of the configured
    key source while the app runs (:meth:`lifetime`), None without one (and
    before the app starts): then no token is read and callers are
    anonymous, as the settings say."""

    __slots__ = ("config", "verifier")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier: TokenVerifier | None = None

    def lifetime(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """The app's ``cleanup_ctx`` entry that opens the verifier (a JWKS
        client's HTTP session with it) and closes it with the app."""

        async def verifier_open(app: web.Application) -> AsyncIterator[None]:
            async with open_verifier(self.config) as verifier:
                self.verifier = verifier
                try:
                    yield
                finally:
                    self.verifier = None

        return verifier_open

    async def check_bearer(self, request: web.Request) -> None:
        """Verify an ``/api/`` request's Bearer token before its handler runs
        (InvalidToken or TokenExpired refuse it, before anything is written);
        :func:`bearer` then gives its identity."""
        identity = None
        verifier = self.verifier
        if verifier is not None and request.path.startswith(API_PREFIX):
            scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
            if scheme.lower() == "bearer":
                identity = await verifier.verify(token.strip())
        request[BEARER] = identity


def bearer(request: web.Request) -> Identity | None:
    """The identity the request's Bearer token proved, None without one."""
    return request.get(BEARER)


def session_record(identity: Identity) -> dict[str, Any]:
    """What a session keeps of a sign-in (its user id is the session's)."""
    rooms = {grant.pattern: str(grant.role) for grant in identity.grants}
    return {"name": identity.name, "exp": identity.expires_at, "rooms": rooms}


def session_identity(user_id: str, record: Any, leeway_s: float) -> Identity | None:
    """The identity a session's sign-in record gives; None when it holds
    none; TokenExpired once its token's ``exp`` and the leeway have passed."""
    if not isinstance(record, dict):
        return None
    expires_at = float(record["exp"])
    if time.time() > expires_at + leeway_s:
        raise TokenExpired("the sign-in has expired; sign in again with a newer token")
    return Identity(user_id, record.get("name"), expires_at, parse_grants(record.get("rooms")))


def expires_at(identity: Identity) -> int | float:
    """``exp`` as the token gave it: a whole number, when it was one."""
    value = identity.expires_at
    return int(value) if value.is_integer() else value


def is_private(config: Config, room: str) -> bool:
    """Whether ``room`` starts with one of ``private_room_prefixes``."""
    return room.startswith(tuple(config.private_room_prefixes))


def room_role(config: Config, identity: Identity | None, room: str) -> Role:
    """The caller's role in ``room`` (``identity`` None: not signed in).

    A private room admits only a caller with a grant for it: to anyone else
    it does not exist (NotFound, the same answer whether it was ever used or
    not). In a public room a grant that matches decides; without one a
    signed-in user is a member, and a caller who has not signed in a member
    under ``anonymous = "write"``, a reader otherwise.
    """
    role = None if identity is None else identity.role_in(room)
    if is_private(config, room):
        if role is None:
            raise NotFound(f"no room {room!r}")
        return role
    if role is not None:
        return role
    if identity is None and config.anonymous != "write":
        return Role.READER
    return Role.MEMBER


def check_may_post(role: Role, identity: Identity | None) -> None:
    """Refuse a message from a reader: Forbidden."""
    if role < Role.MEMBER:
        if identity is None:
            raise Forbidden("anonymous visitors may only read here: sign in to post")
        raise Forbidden("a reader in this room may not post")


def session_tag(key: str) -> str:
    """What names a browser session where others may see it (a channel):
    not its key, which is as good as its cookie."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


async def stream_expiry(request: web.Request, identity: Identity) -> Expiry:
    """When a signed-in stream's sign-in ends, and for a browser session's
    stream how to learn that the session was refreshed (by a request this
    worker may not see: a read of its expiry now) and its tag (what its
    sign-out is announced with). A Bearer token's stream renews only in
    band."""
    if bearer(request) is not None:
        return Expiry(identity.expires_at)
    session = await aiohttp_session.get_session(request)
    key = session.identity
    if key is None:
        return Expiry(identity.expires_at)
    storage: SignedRedisStorage = request[aiohttp_session.STORAGE_KEY]

    async def expires_at() -> float | None:
        data = await storage.stored(str(key))
        record = data.get(AUTH)
        if data.get("user_id") != identity.user_id or not isinstance(record, dict):
            return None
        return float(record["exp"])

    return Expiry(identity.expires_at, expires_at, session_tag(str(key)))
