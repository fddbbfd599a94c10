"""What the application's backend may do to its users: disconnect them, ban
them, and give them (or take) a role in a room.

These are what the server API's moderate scope calls. Each reaches every
worker of every instance through Redis (see
:mod:`server.store.moderation_store`): streams end at once (SSE ``event:
disconnected`` with ``{"reason", "reconnect"}``; WebSocket close 4000 when
the client may reconnect, 4403 when not), and a banned user is refused
(403 ``banned``) where a post, a stream or a sign-in starts.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from ..core.close_reason import CloseReason
from ..core.errors import BadRequest
from ..core.identity import Role, user_id
from ..core.model import ROOM_RE
from ..store.moderation_store import ModerationStore

REASON_MAX = 200  # characters of a ban's reason


def _user(value: str) -> str:
    return user_id(value, "the user id")


def _rooms(rooms: Iterable[str] | None) -> list[str] | None:
    if rooms is None:
        return None
    if isinstance(rooms, str):
        raise BadRequest("'rooms' is a list of room names")
    rooms = list(rooms)
    if not all(isinstance(room, str) and ROOM_RE.fullmatch(room) for room in rooms):
        raise BadRequest("not a room name")
    return rooms


class Moderation:
    """Disconnects, bans and memberships, for the whole deployment."""

    __slots__ = ("store",)

    def __init__(self, redis: aioredis.Redis) -> None:
        self.store = ModerationStore(redis)

    async def disconnect(self, user_id: str, *, room: str | None = None, reconnect: bool) -> None:
        """End every stream of the user (in ``room``, when given), on every
        worker; ``reconnect`` says whether its clients may come back."""
        reason = CloseReason.DISCONNECTED if reconnect else CloseReason.REMOVED
        rooms = None if room is None else _rooms([room])
        await self.store.disconnect(_user(user_id), reason, rooms)

    async def ban(
        self,
        user_id: str,
        *,
        rooms: Iterable[str] | None = None,
        for_s: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Ban the user everywhere (or in ``rooms``), until :meth:`unban` or
        for ``for_s`` seconds; its streams there end, not to come back."""
        user_id, room_list = _user(user_id), _rooms(rooms)
        if for_s is not None and (
            isinstance(for_s, bool) or not isinstance(for_s, int | float) or not 0 < for_s < 10**9
        ):
            raise BadRequest("'for_s' must be a positive number of seconds")
        await self.store.ban(user_id, room_list, for_s, (reason or "")[:REASON_MAX])
        await self.store.disconnect(user_id, CloseReason.BANNED, room_list)

    async def unban(self, user_id: str, rooms: Iterable[str] | None = None) -> None:
        """Lift the user's bans (every one, or those in ``rooms``)."""
        await self.store.unban(_user(user_id), _rooms(rooms))

    async def grant(self, room: str, user_id: str, role: str | Role) -> None:
        """Give the user ``role`` in ``room`` (in a private room: membership)."""
        try:
            parsed = role if isinstance(role, Role) else Role.parse(role)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        (room,) = _rooms([room]) or []
        await self.store.grant(room, _user(user_id), str(parsed))

    async def revoke(self, room: str, user_id: str) -> None:
        """Take the user's membership of ``room``; its streams there end."""
        (room,) = _rooms([room]) or []
        await self.store.revoke(room, _user(user_id))
        await self.store.disconnect(user_id, CloseReason.REMOVED, [room])
