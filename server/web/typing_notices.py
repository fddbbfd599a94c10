"""``POST /api/rooms/{room}/typing`` and the WebSocket frame ``{"type": "typing"}``:
the others in the room learn that the caller is typing.

Typing is a write: the same checks as posting (the room, a private room's
access, a reader or an anonymous visitor under ``anonymous = "read"``, a
ban), and budgets of its own at the messages' rates (one round trip for
the budgets, the ban and the name). A refused notice writes nothing; what
it took from the budgets goes back when a ban refuses it.

A room that only counts its users (over ``presence_list_max``) is told of
no typing: where this worker knows the room to be one, a notice is
answered at once, with nothing sent, stored or charged (elsewhere, the
store's script finds it so); and a POST there that is surely a member's
whatever its session holds (an anonymous session's cookie in a public room
where anonymous visitors write: :func:`surely_member`)
is answered without reading its session either.

Coalescing: at most one notice per user per room every two seconds. Redis
decides, for every worker of every instance, with one short-lived key per
room and user (see :mod:`server.store.typing_store`); each worker also
remembers the notices it sent and relayed (:class:`~server.core.typing_notices.Recent`),
so a repeat it knows to be early is dropped without that second round trip.
"""

from __future__ import annotations

import logging
from typing import cast

import redis.asyncio as aioredis
from aiohttp import web

from ..core.errors import BadRequest, RateLimited, UnsupportedMediaType
from ..core.hub import Hub
from ..core.typing_notices import WINDOW_S, Recent, TypingNotice
from ..store.aiohttp_session_compat import storage_of
from ..store.batch import Batch
from ..store.keys import name_key
from ..store.ratelimit import Budget, Budgets, RateLimiter
from ..store.session_store import SignedRedisStorage
from ..store.typing_store import TypingStore
from . import message_input, write_checks
from .addresses import owner_of
from .sessions import Sessions, User
from .signin import bearer, is_private

log = logging.getLogger(__name__)


def surely_member(sessions: Sessions, request: web.Request, room: str) -> bool:
    """Whether the caller is a member of ``room`` whatever its session holds,
    so that the session need not be read: a signed cookie of an anonymous
    session (:meth:`SignedRedisStorage.anonymous_cookie`), no token, in a
    public room where anonymous visitors write."""
    config = sessions.sign_in.config
    return (
        config.anonymous == "write"
        and bearer(request) is None
        and not is_private(config, room)
        and cast(SignedRedisStorage, storage_of(request)).anonymous_cookie(request)
    )


class Typing:
    """Typing notices, with what they take: the sessions (who, and their role
    in the room), the budgets, the store, and the hub that tells this
    worker's subscribers."""

    __slots__ = ("budgets", "hub", "limiter", "recent", "redis", "sessions", "store")

    def __init__(
        self,
        sessions: Sessions,
        redis: aioredis.Redis,
        limiter: RateLimiter,
        budgets: Budgets,
        hub: Hub,
        *,
        list_max: int,
    ) -> None:
        self.sessions = sessions
        self.redis = redis
        self.limiter = limiter
        self.budgets = budgets
        self.hub = hub
        self.store = TypingStore(redis, window_ms=int(WINDOW_S * 1000), list_max=list_max)
        self.recent = Recent()

    async def post_typing(self, request: web.Request) -> web.Response:
        """No body, or a JSON object (``{}``): 204, whether a notice went out or
        was coalesced with an earlier one."""
        room = message_input.room_name(request.match_info["room"])
        await _no_body_or_object(request)
        if self.hub.counts_only(room) and surely_member(self.sessions, request, room):
            # Nothing would come of it (see notify), and the caller may type
            # there whoever it is: its session is not even read.
            return web.Response(status=204)
        user = await self.sessions.current_user(request)
        await self.sessions.check_may_post(user, room)
        await self.notify(room, user, owner_of(request.remote))
        return web.Response(status=204)

    async def notify(self, room: str, user: User, address: str) -> None:
        """Tell the others in the room that the user is typing, unless a notice
        of the user's went out within the window (the caller checked the
        user's role). Raises Banned or RateLimited, writing nothing."""
        if self.hub.counts_only(room):
            return  # nobody there is told who types: nothing to send, store or charge
        user_id = user.user_id
        charges: list[tuple[Budget, str]] = [
            (self.budgets.typing, user_id),
            (self.budgets.address_typing, address),
        ]
        batch = Batch(self.redis)
        kept_name = batch.get(name_key(user_id)) if user.name is None else None
        refused = "you are banned from this room"
        wait = await write_checks.charge(
            batch, self.limiter, charges, user_id, room, refused=refused
        )
        if wait:
            raise RateLimited("too many typing notices; slow down", retry_after=wait)
        recent = self.recent
        if not recent.due(room, user_id):
            return
        recent.hold(room, user_id)  # (a repeat while this one is on its way is dropped here)
        name = user.name or (kept_name.value if kept_name else None) or user_id
        try:
            wait_ms = await self.store.notify(room, user_id, name)
        except BaseException:
            recent.release(room, user_id)
            raise
        if wait_ms > 0:  # another worker's notice holds the window: until it ends
            recent.hold(room, user_id, wait_ms / 1000)

    def arrived(self, room: str, user_id: str, name: str) -> None:
        """A notice from the room's channel (whichever worker sent it): tell the
        local subscribers, and hold the user's next one here for the window."""
        self.recent.hold(room, user_id)
        self.hub.typing(room, TypingNotice(user_id, name))


async def _no_body_or_object(request: web.Request) -> None:
    """The request's body: none, or a JSON object (its fields are ignored)."""
    raw = await request.read()
    if not raw:
        return
    if request.content_type not in ("application/json", "application/octet-stream"):
        raise UnsupportedMediaType("send no body, or JSON (application/json)")
    if request.charset and request.charset.lower() not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise BadRequest(f"bodies must be UTF-8, not {request.charset!r}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    message_input.json_object(text, "body")
