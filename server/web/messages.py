"""Editing and deleting messages: ``PATCH`` and ``DELETE /api/rooms/{room}/messages/{id}``,
and the deletion the application's backend asks for (the server API).

The author edits its message within ``edit_window_s`` and deletes it at
any time; a moderator of the room deletes any message; the backend deletes
any message. An edit (and a user's deletion) costs what a message costs,
from the user's budget and the client address's, read with the user's
bans in one round trip; a request refused for any reason writes nothing
(what it took from the budgets goes back). The change itself is one
script in the room's slot (:mod:`server.store.edits`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..core.errors import (
    BadRequest,
    ChatError,
    Forbidden,
    RateLimited,
    UnsupportedMediaType,
)
from ..core.identity import Role
from ..core.ids import MessageId, parse_id
from ..core.model import Change
from ..store.batch import Batch
from ..store.edits import Edits
from ..store.ratelimit import Budget
from . import message_input, write_checks
from .addresses import owner_of
from .posting import Posting
from .sessions import Sessions, User
from .views import json_body

log = logging.getLogger(__name__)


def parse_message_id(value: str) -> MessageId:
    """A message id from a path; BadRequest when it is not one."""
    parsed = parse_id(value)
    if parsed is None:
        raise BadRequest("a message id is like 1700000000000-0")
    return parsed


class Messages:
    """Edits and deletions, with what they take: the sessions (who, and
    their role in the room), the posting service's budgets, and the store."""

    __slots__ = ("edit_window_s", "edits", "posting", "sessions")

    def __init__(
        self, sessions: Sessions, posting: Posting, edits: Edits, *, edit_window_s: int
    ) -> None:
        self.sessions = sessions
        self.posting = posting
        self.edits = edits
        self.edit_window_s = edit_window_s

    async def patch_message(self, request: web.Request) -> web.Response:
        """``{"text"}``: the author's new text; 200 ``{"message"}``, with ``edited``."""
        room = message_input.room_name(request.match_info["room"])
        target = parse_message_id(request.match_info["id"])
        if request.content_type not in ("application/json", "application/octet-stream"):
            raise UnsupportedMediaType("send JSON (application/json)")
        body = await json_body(request)
        text = message_input.message_text(body.get("text"), self.posting.max_chars)
        user = await self.sessions.current_user(request, charge=False)
        await self._role(user, room)
        edit = await self._charged(
            user,
            room,
            owner_of(request.remote),
            lambda: self.edits.edit(room, target, user.user_id, text, window_s=self.edit_window_s),
        )
        return web.Response(text='{"message":' + edit.json + "}", content_type="application/json")

    async def delete_message(self, request: web.Request) -> web.Response:
        """The author's, or a moderator's, deletion: 204."""
        room = message_input.room_name(request.match_info["room"])
        target = request.match_info["id"]
        parse_message_id(target)  # (a malformed id is a 400 before anything else)
        user = await self.sessions.current_user(request, charge=False)
        await self.delete(room, target, by=user, address=owner_of(request.remote))
        return web.Response(status=204)

    async def delete(
        self, room: str, message_id: str, *, by: User | None, address: str | None = None
    ) -> Change:
        """Delete a message of ``room``; the deletion, which every client of
        the room gets (``message_deleted``).

        ``by``: the user who asks, who must be its author or a moderator of
        the room (and is charged as for an edit, with ``address``, the
        client's budget key, when given); None: the application's backend,
        which may delete any message. Raises NotFound (an unknown room name,
        a private room the user has no access to, no such message, or one
        already deleted), BadRequest (a malformed id), Forbidden, Banned or
        RateLimited.
        """
        room = message_input.room_name(room)
        target = parse_message_id(message_id)
        if by is None:
            return await self.edits.delete(room, target, None)
        user = by
        role = await self._role(user, room)
        author = None if role >= Role.MODERATOR else user.user_id
        return await self._charged(
            user, room, address, lambda: self.edits.delete(room, target, author)
        )

    async def _role(self, user: User, room: str) -> Role:
        """The user's role in the room: NotFound for a private room it has no
        access to, Forbidden below a member."""
        role = await self.sessions.role_in(user, room)
        if role < Role.MEMBER:
            if user.identity is None:
                raise Forbidden("anonymous visitors may only read here: sign in to write")
            raise Forbidden("a reader in this room may not change messages")
        return role

    async def _charged(
        self,
        user: User,
        room: str,
        address: str | None,
        change: Callable[[], Awaitable[Change]],
    ) -> Change:
        """Run ``change`` once the budgets allow it and no ban holds the user;
        give back what it took when it is refused."""
        budgets = self.posting.budgets
        limiter = self.posting.limiter
        charges: list[tuple[Budget, str]] = [(budgets.messages, user.user_id)]
        if address is not None:
            charges.append((budgets.address_messages, address))
        refused = "you are banned from changing messages here"
        batch = Batch(self.posting.redis)
        wait = await write_checks.charge(
            batch, limiter, charges, user.user_id, room, refused=refused
        )
        if wait:
            raise RateLimited("too many messages and edits; slow down", retry_after=wait)
        try:
            return await change()
        except ChatError:
            await limiter.give_back(*charges)
            raise
