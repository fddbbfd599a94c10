"""Browser identity: a server-side session holding a random user id and a name.

The user id is made here and never taken from the client; the session is
kept in Redis (:mod:`server.session_store`).
"""

from __future__ import annotations

import dataclasses
import re
import secrets

import aiohttp_session
from aiohttp import web
from redis.asyncio.client import Pipeline

from . import keys
from .addresses import budget_key
from .errors import RateLimited
from .names import friendly_name
from .ratelimit import Budget
from .session_store import SignedRedisStorage

USER_ID_RE = re.compile(r"u-[0-9a-f]{1,64}")


def new_user_id() -> str:
    return "u-" + secrets.token_hex(12)  # 96 random bits


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


async def rename(request: web.Request, name: str) -> User:
    session = await aiohttp_session.get_session(request)
    user = await current_user(request)
    session["name"] = name
    return dataclasses.replace(user, name=name)
