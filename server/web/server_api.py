"""The server API (``/server/v1/``): what the application's backend may do,
with a key of ``server_api_keys`` (see :mod:`server.web.server_keys`).

Publishing and reading go through what the browser API uses: a message is
posted by :class:`~server.web.posting.Posting` (the same text rules and
idempotency; as the trusted backend, without the browser's budgets, and
also as a banned user), history is read by :class:`~server.web.history.History`,
presence by the presence store. Rooms are listed from the registry of
rooms with history (:mod:`server.store.room_registry`). No session is ever
made for a request here, and neither the browser's cross-site checks nor
its per-address budgets apply: a key is the caller's proof.

Rooms named in a path answer 404 when the name is not a room's (as in the
browser API); ``GET /server/v1/rooms/{room}`` also answers 404 for a room
without history. History and presence of a room without history are
empty, as in the browser API.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..common.api_keys import ApiKey, parse_keys
from ..common.config import Config
from ..core.errors import BadRequest, NotFound
from ..core.identity import user_id
from ..core.model import ROOM_RE
from ..core.names import clean_name
from ..store.presence_store import PresenceStore
from ..store.room_registry import RoomInfo
from . import message_input, state
from .broadcast import broadcast
from .history import HISTORY_LIMIT_MAX, History, id_param, int_param
from .messages import Messages
from .middlewares import ThrottledErrorLog
from .moderation import Moderation
from .posting import Posting
from .server_input import json_fields, room_list
from .server_keys import ServerKeys, count_requests
from .server_moderation import ServerModeration
from .sessions import User
from .signin import is_private
from .views import ONLINE_LIMIT_MAX

ROOMS_LIMIT_MAX = 500
# The start of a room name: what a listing's prefix may be.
PREFIX_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}|")
MESSAGE_FIELDS = ("text", "user_id", "name")


class ServerApi:
    """Publishing and reading for the backend: messages, broadcasts, rooms,
    history, presence. Each handler takes the request and the calling key."""

    __slots__ = ("config", "history", "posting", "presence")

    def __init__(
        self,
        config: Config,
        posting: Posting,
        presence: PresenceStore,
        redis_errors: ThrottledErrorLog,
    ) -> None:
        self.config = config
        self.posting = posting
        self.presence = presence
        self.history = History(posting.broker, redis_errors, posting.max_chars)

    async def post_message(self, request: web.Request, key: ApiKey) -> web.Response:
        arrived = time.monotonic()
        room = message_input.room_name(request.match_info["room"])
        idempotency = _idempotency(request, key)
        body = await json_fields(request, MESSAGE_FIELDS)
        sender = _sender(body, key)
        text = body.get("text")
        message, replayed = await self.posting.post(
            room, sender, text, address=None, idempotency_key=idempotency, arrived=arrived
        )
        return web.Response(
            text='{"message":' + message.json + "}",
            status=201,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )

    async def broadcast(self, request: web.Request, key: ApiKey) -> web.Response:
        arrived = time.monotonic()
        idempotency = _idempotency(request, key)
        body = await json_fields(request, ("rooms", *MESSAGE_FIELDS))
        rooms = room_list(body.get("rooms"))
        sender = _sender(body, key)
        answer = await broadcast(
            self.posting,
            rooms,
            sender,
            body.get("text"),
            idempotency_key=idempotency,
            arrived=arrived,
        )
        return web.Response(text=answer, content_type="application/json")

    async def list_rooms(self, request: web.Request, key: ApiKey) -> web.Response:
        prefix = request.query.get("prefix", "")
        if not PREFIX_RE.fullmatch(prefix):
            raise BadRequest("'prefix' must be the start of a room name (a-z, 0-9, '_' and '-')")
        after = _decode_cursor(request.query.get("cursor"))
        limit = int_param(request, "limit", 100, ROOMS_LIMIT_MAX)
        rooms, last = await self.posting.broker.rooms.page(prefix, after, limit)
        body = {
            "rooms": [{"room": r.room, "last_id": r.last_id, "online": r.online} for r in rooms],
            "cursor": None if last is None else _encode_cursor(last),
        }
        return web.json_response(body)

    async def get_room(self, request: web.Request, key: ApiKey) -> web.Response:
        room = message_input.room_name(request.match_info["room"])
        (info,) = await self.posting.broker.rooms.info([room])
        if info is None:
            raise NotFound(f"no room {room!r}: it has no history")
        return web.json_response(self._room(info))

    def _room(self, info: RoomInfo) -> dict[str, Any]:
        return {
            "room": info.room,
            "private": is_private(self.config, info.room),
            "last_id": info.last_id,
            "length": info.length,
            "online": info.online,
        }

    async def get_messages(self, request: web.Request, key: ApiKey) -> web.StreamResponse:
        room = message_input.room_name(request.match_info["room"])
        limit = int_param(request, "limit", 50, HISTORY_LIMIT_MAX)
        before, after = id_param(request, "before"), id_param(request, "after")
        return await self.history.respond(request, room, limit, before, after)

    async def get_online(self, request: web.Request, key: ApiKey) -> web.Response:
        room = message_input.room_name(request.match_info["room"])
        limit = int_param(request, "limit", 100, ONLINE_LIMIT_MAX)
        after = request.query.get("after") or None
        if after is not None:
            user_id(after, "'after'")
        online, count = await self.presence.online_page(room, limit, after)
        return web.json_response({"online": online, "count": count})


def install(
    app: web.Application,
    posting: Posting,
    presence: PresenceStore,
    moderation: Moderation,
    messages: Messages,
    redis_errors: ThrottledErrorLog,
) -> list[tuple[Any, str, Handler]]:
    """The server API's routes, each behind its scope's key check, for
    :func:`~server.web.app.add_routes`; none without a key (every path of
    it is then the 404 of an unknown path). Its answers are counted in the
    app's metrics."""
    config = app[state.CONFIG]
    keys = parse_keys(config.server_api_keys)
    if not keys:
        return []
    app.on_response_prepare.append(count_requests(app[state.METRICS]))
    check = ServerKeys(keys).guard
    api = ServerApi(config, posting, presence, redis_errors)
    moderate = ServerModeration(moderation, messages)
    room = "/server/v1/rooms/{room}"
    user = "/server/v1/users/{user_id}"
    return [
        (web.post, f"{room}/messages", check("publish", api.post_message)),
        (web.post, "/server/v1/broadcast", check("publish", api.broadcast)),
        (web.get, "/server/v1/rooms", check("read", api.list_rooms)),
        (web.get, room, check("read", api.get_room)),
        (web.get, f"{room}/messages", check("read", api.get_messages)),
        (web.get, f"{room}/online", check("read", api.get_online)),
        (web.delete, f"{room}/messages/{{id}}", check("moderate", moderate.delete_message)),
        (web.put, f"{room}/members/{{user_id}}", check("moderate", moderate.put_member)),
        (web.delete, f"{room}/members/{{user_id}}", check("moderate", moderate.delete_member)),
        (web.post, f"{user}/disconnect", check("moderate", moderate.disconnect)),
        (web.put, f"{user}/ban", check("moderate", moderate.ban)),
        (web.delete, f"{user}/ban", check("moderate", moderate.unban)),
    ]


def _idempotency(request: web.Request, key: ApiKey) -> str | None:
    """The request's ``Idempotency-Key``, as kept: scoped to the calling key
    (a space, which no key sent holds, keeps it apart from the browsers')."""
    sent = message_input.idempotency_key(request.headers.get("Idempotency-Key"), "Idempotency-Key")
    return None if sent is None else f"server {key.name} {sent}"


def _sender(body: dict[str, Any], key: ApiKey) -> User:
    """Who a message is from: ``user_id`` (any user), or the key itself
    (``server:<name>``); with ``name``, or else the user's own name (the key's name)."""
    sender = body.get("user_id")
    if sender is None:
        sender = key.user_id
    else:
        sender = user_id(sender)
        if sender.startswith("server:") and sender != key.user_id:
            raise BadRequest("user ids that start with 'server:' are other keys'")
    name = body.get("name")
    if name is not None:
        name = clean_name(name)
    elif sender == key.user_id:
        name = key.name
    return User(sender, name, is_new=False)


def _encode_cursor(room: str) -> str:
    return base64.urlsafe_b64encode(room.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        room = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        room = ""
    if not ROOM_RE.fullmatch(room):
        raise BadRequest("'cursor' is not one this server gave")
    return room
