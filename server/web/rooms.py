"""The caller's rooms: ``GET /api/rooms`` and ``PUT /api/rooms/{room}/read``.

A user's rooms are those it posted in or marked read (the most recent
:data:`~server.store.read_marks.ROOMS_MAX`), each with its newest message
and how many messages by others came after the user's read position
(:mod:`server.store.read_marks`). The list is ordered by when each room
last moved: its newest message, or the user's own last read or post
there, whichever is later. Private rooms the user lost access to are left
out, as are rooms whose history is gone.

Marking read is a small write: it comes out of a budget of its own per
user (``rate_limit_per_s`` and ``rate_limit_burst``, as messages) and per
client address (``address_rate_limit_*``), so that marking read never
stops a user posting. A position past the room's newest entry is clamped
to it; one older than the kept position changes nothing (200, with the
position kept).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp_session
from aiohttp import web

from ..common.config import Config
from ..core.errors import BadRequest, NotFound, RateLimited, UnsupportedMediaType
from ..core.ids import format_id, parse_id
from ..core.wire import to_json
from ..store.batch import Batch
from ..store.keys import members_key, stream_key
from ..store.ratelimit import Budget, RateLimiter
from ..store.read_marks import UNREAD_MAX, ReadMarks, RoomState
from . import message_input
from .addresses import owner_of
from .sessions import Sessions, User
from .signin import bearer, room_role
from .views import json_body

log = logging.getLogger(__name__)


class Rooms:
    """The caller's rooms, with what they take: the sessions (who, and
    which private rooms it may see), the budgets and the store."""

    __slots__ = ("config", "limiter", "marks", "per_address", "per_user", "sessions")

    def __init__(
        self, sessions: Sessions, limiter: RateLimiter, marks: ReadMarks, config: Config
    ) -> None:
        self.sessions = sessions
        self.limiter = limiter
        self.marks = marks
        self.config = config
        self.per_user = Budget("reads", config.rate_limit_per_s, config.rate_limit_burst)
        self.per_address = Budget(
            "address_reads", config.address_rate_limit_per_s, config.address_rate_limit_burst
        )

    async def get_rooms(self, request: web.Request) -> web.Response:
        """``{"rooms": [{"room", "last_message", "unread"}]}``, newest first."""
        user = await self._known_user(request)
        if user is None:  # (no session is made for it: a stranger has no rooms)
            return web.json_response({"rooms": []})
        listed = await self.marks.rooms(user.user_id)
        visible = await self._visible(user, [room for room, _, _ in listed])
        states = await self.marks.states(user.user_id, [r for r in listed if r[0] in visible])
        states.sort(key=lambda state: state.newest_ms, reverse=True)
        body = ",".join(_room_json(state) for state in states)
        return web.Response(text='{"rooms":[' + body + "]}", content_type="application/json")

    async def put_read(self, request: web.Request) -> web.Response:
        """``{"id"}``: the caller has read ``room`` up to that message; 200
        ``{"room", "read"}`` with the position kept."""
        room = message_input.room_name(request.match_info["room"])
        if request.content_type not in ("application/json", "application/octet-stream"):
            raise UnsupportedMediaType("send JSON (application/json)")
        body = await json_body(request)
        value = body.get("id")
        target = parse_id(value) if isinstance(value, str) else None
        if target is None:
            raise BadRequest("'id' must be a message id, like 1700000000000-0")
        user = await self.sessions.current_user(request)
        await self.sessions.role_in(user, room)  # (NotFound for a private room)
        charges = [(self.per_user, user.user_id), (self.per_address, owner_of(request.remote))]
        batch = Batch(self.sessions.redis)
        verdict = self.limiter.charge(batch, *charges)
        tail = batch.commands(
            lambda pipe: pipe.xrevrange(stream_key(room), count=1),
            lambda replies: parse_id(str(replies[0][0][0])) if replies[0] else None,
        )
        await batch.run()
        if verdict.value.wait:
            raise RateLimited("too many read marks; slow down", retry_after=verdict.value.wait)
        last = tail.value
        if last is None:
            await self.limiter.give_back(*charges)
            raise NotFound(f"no messages in room {room!r}")
        batch = Batch(self.sessions.redis)
        kept = self.marks.mark(
            batch,
            user.user_id,
            room,
            format_id(min(target, last)),
            signed_in=user.identity is not None,
            new=user.is_new,
        )
        await batch.run()
        return web.json_response({"room": room, "read": kept.value})

    async def _known_user(self, request: web.Request) -> User | None:
        """The caller, when it has an identity already (a token, or a
        session); None for a caller without one, who is given none."""
        if bearer(request) is None:
            session = await aiohttp_session.get_session(request)
            if not isinstance(session.get("user_id"), str):
                self.sessions.check_anonymous()
                return None
        return await self.sessions.current_user(request, charge=False)

    async def _visible(self, user: User, rooms: list[str]) -> set[str]:
        """Those of ``rooms`` the user may read: a private room needs a grant
        in its token or a membership (read for all of them in one round trip)."""
        visible, asked = set(), []
        for room in rooms:
            try:
                room_role(self.config, user.identity, room)
                visible.add(room)
            except NotFound:
                asked.append(room)
        if asked:
            batch = Batch(self.sessions.redis)
            members = batch.commands(
                lambda pipe: [pipe.hget(members_key(room), user.user_id) for room in asked],
                lambda replies: [role is not None for role in replies],
            )
            await batch.run()
            visible.update(
                room for room, member in zip(asked, members.value, strict=True) if member
            )
        return visible


def _room_json(state: RoomState) -> str:
    unread: Any = state.unread if state.unread <= UNREAD_MAX else f"{UNREAD_MAX}+"
    message = "null" if state.last_message is None else state.last_message.json
    head = to_json({"room": state.room, "unread": unread})
    return head[:-1] + ',"last_message":' + message + "}"
