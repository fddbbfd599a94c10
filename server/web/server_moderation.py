"""The server API's ``moderate`` scope: deletions, memberships, disconnects and bans.

Each route checks its input here, then calls
:class:`~server.web.moderation.Moderation`, which reaches every worker of
every instance within a second (or, for a deletion, the same
:meth:`~server.web.messages.Messages.delete` as the browser's, as the
backend, which may delete any message). Answers have no body: 204, or 202
for a disconnect (the streams end as the notice reaches their workers).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..common.api_keys import ApiKey
from ..core.errors import BadRequest
from ..core.identity import Role, user_id
from . import message_input
from .messages import Messages
from .moderation import REASON_MAX, Moderation
from .server_input import json_fields, room_list

FOR_S_MAX = 10**9 - 1  # seconds of a ban: about 31 years


class ServerModeration:
    """The handlers of the moderate scope."""

    __slots__ = ("messages", "moderation")

    def __init__(self, moderation: Moderation, messages: Messages) -> None:
        self.moderation = moderation
        self.messages = messages

    async def delete_message(self, request: web.Request, key: ApiKey) -> web.Response:
        room = message_input.room_name(request.match_info["room"])
        await json_fields(request, (), optional=True)
        await self.messages.delete(room, request.match_info["id"], by=None)
        return web.Response(status=204)

    async def put_member(self, request: web.Request, key: ApiKey) -> web.Response:
        room = message_input.room_name(request.match_info["room"])
        user = user_id(request.match_info["user_id"], "the path's user id")
        body = await json_fields(request, ("role",))
        try:
            role = Role.parse(body.get("role"))
        except ValueError:
            raise BadRequest("'role' must be one of reader, member, moderator") from None
        await self.moderation.grant(room, user, role)
        return web.Response(status=204)

    async def delete_member(self, request: web.Request, key: ApiKey) -> web.Response:
        room = message_input.room_name(request.match_info["room"])
        user = user_id(request.match_info["user_id"], "the path's user id")
        await json_fields(request, (), optional=True)
        await self.moderation.revoke(room, user)
        return web.Response(status=204)

    async def disconnect(self, request: web.Request, key: ApiKey) -> web.Response:
        user = user_id(request.match_info["user_id"], "the path's user id")
        body = await json_fields(request, ("reconnect",), optional=True)
        reconnect = body.get("reconnect", True)
        if not isinstance(reconnect, bool):
            raise BadRequest("'reconnect' must be true or false")
        await self.moderation.disconnect(user, reconnect=reconnect)
        return web.Response(status=202)

    async def ban(self, request: web.Request, key: ApiKey) -> web.Response:
        user = user_id(request.match_info["user_id"], "the path's user id")
        body = await json_fields(request, ("for_s", "rooms", "reason"), optional=True)
        rooms = _rooms(body)
        for_s = body.get("for_s")
        if for_s is not None and (
            isinstance(for_s, bool)
            or not isinstance(for_s, int | float)
            or not 0 < for_s <= FOR_S_MAX
        ):
            raise BadRequest(f"'for_s' must be a number of seconds, above 0 and up to {FOR_S_MAX}")
        reason = body.get("reason")
        if reason is not None and (
            not isinstance(reason, str) or len(reason) > REASON_MAX or not _is_unicode(reason)
        ):
            raise BadRequest(f"'reason' must be a string of at most {REASON_MAX} characters")
        await self.moderation.ban(user, rooms=rooms, for_s=for_s, reason=reason)
        return web.Response(status=204)

    async def unban(self, request: web.Request, key: ApiKey) -> web.Response:
        user = user_id(request.match_info["user_id"], "the path's user id")
        body = await json_fields(request, ("rooms",), optional=True)
        await self.moderation.unban(user, _rooms(body))
        return web.Response(status=204)


def _rooms(body: dict[str, Any]) -> list[str] | None:
    """The rooms a ban names; None (everywhere) when it names none."""
    rooms = body.get("rooms")
    return None if rooms is None else room_list(rooms)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be stored: no lone surrogate (a JSON ``"\\ud800"``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
