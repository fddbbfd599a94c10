"""Plain HTTP handlers: the page, the session, history, posting, health."""

from __future__ import annotations

import asyncio
import hmac
import os
import pathlib
import time
import urllib.parse
from typing import Any

import redis.asyncio as aioredis
from aiohttp import hdrs, web
from multidict import MultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST

from ..common.metrics import Metrics
from ..common.metrics import render as render_metrics
from ..core.errors import BadRequest, ChatError, NotFound, Unavailable, UnsupportedMediaType
from ..core.identity import user_id
from ..core.model import ROOM_RE, Message
from ..core.names import clean_name
from ..store.broker import Broker
from ..store.connection_registry import ConnectionRegistry
from ..store.session_store import SessionChanged, guessed_wrong
from . import message_input, sessions
from .addresses import owner_of
from .history import HISTORY_LIMIT_MAX, History, id_param, int_param
from .middlewares import ThrottledErrorLog
from .posting import Posting
from .responses import error_response
from .sessions import Sessions
from .signin import expires_at

STATIC_DIR = pathlib.Path(__file__).parent / "static"
ONLINE_LIMIT_MAX = 1000


async def page(request: web.Request) -> web.StreamResponse:
    message_input.room_name(request.match_info.get("room", "general"))
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC_DIR / "favicon.ico", headers={"Cache-Control": "public, max-age=86400"}
    )


class Api:
    """The chat's HTTP handlers (the session, history, presence, posting),
    with what they take."""

    __slots__ = ("broker", "history", "posting", "redis_errors", "registry", "sessions")

    def __init__(
        self,
        sessions: Sessions,
        posting: Posting,
        broker: Broker,
        registry: ConnectionRegistry,
        redis_errors: ThrottledErrorLog,
    ) -> None:
        self.sessions = sessions
        self.posting = posting
        self.broker = broker
        self.registry = registry  # (presence, and the names it shows)
        self.redis_errors = redis_errors
        self.history = History(broker, redis_errors, posting.max_chars)

    async def get_session(self, request: web.Request) -> web.Response:
        """Who the caller is; with ``?room=``, also its ``role`` there (null
        in a private room it has no access to: no room, as everywhere)."""
        room = request.query.get("room")
        if room is not None and not ROOM_RE.fullmatch(room):
            raise BadRequest("'room' must be a room name")
        user = await self.sessions.current_user(request)
        name = await self.sessions.display_name(request, user)
        identity = user.identity
        body: dict[str, Any] = {
            "user_id": user.user_id,
            "name": name,
            "signed_in": identity is not None,
            "expires_at": None if identity is None else expires_at(identity),
            "can_rename": self.sessions.may_rename(user),
        }
        if room is not None:
            try:
                body["role"] = str(await self.sessions.role_in(user, room))
            except NotFound:
                body["role"] = None
        return web.json_response(body)

    async def put_session(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = clean_name(body.get("name"))
        user = await self.sessions.rename(request, name)
        ttl_s = sessions.NEW_SESSION_TTL_S if user.is_new else None
        await self.registry.set_name(user.user_id, name, ttl_s=ttl_s)
        return web.json_response({"user_id": user.user_id, "name": user.name})

    async def get_messages(self, request: web.Request) -> web.StreamResponse:
        room = message_input.room_name(request.match_info["room"])
        await self.sessions.check_reader(request, room)
        limit = int_param(request, "limit", 50, HISTORY_LIMIT_MAX)
        return await self.history.respond(request, room, limit, id_param(request, "before"))

    async def get_online(self, request: web.Request) -> web.Response:
        """A page of the room's online users in user id order: how big rooms are listed."""
        room = message_input.room_name(request.match_info["room"])
        await self.sessions.check_reader(request, room)
        limit = int_param(request, "limit", 100, ONLINE_LIMIT_MAX)
        after = request.query.get("after") or None
        if after is not None:
            user_id(after, "'after'")
        online, count = await self.registry.presence.online_page(room, limit, after)
        return web.json_response({"online": online, "count": count})

    async def post_message(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        room = message_input.room_name(request.match_info["room"])
        key = message_input.idempotency_key(
            request.headers.get("Idempotency-Key"), "Idempotency-Key"
        )
        body: dict[str, Any] | MultiDictProxy[Any]
        if request.content_type == "application/x-www-form-urlencoded":
            body = await form_body(request)
        elif request.content_type == "multipart/form-data":
            try:
                body = await request.post()
            except (ValueError, LookupError):  # no boundary, unknown charset
                raise BadRequest("malformed form body") from None
        elif request.content_type in ("application/json", "application/octet-stream"):
            # (aiohttp's answer when no Content-Type was sent: programs often don't.)
            body = await json_body(request)
        else:
            # Not text/plain read as JSON: that is what a cross-site form can send.
            raise UnsupportedMediaType(
                "send JSON (application/json) or a form (application/x-www-form-urlencoded)"
            )
        # Checked before a session is made for it: a request that fails leaves nothing.
        message_input.message_text(body.get("text"), self.posting.max_chars)
        try:
            message, replayed = await self._post(request, room, body, key, arrived, guess=True)
        except SessionChanged:
            # The session this worker read lately is no longer what Redis
            # has (signed out, or signed in again elsewhere): nothing was
            # written; start again with it read afresh.
            guessed_wrong(request)
            message, replayed = await self._post(request, room, body, key, arrived, guess=False)
        return web.Response(
            text='{"message":' + message.json + "}",
            status=201,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )

    async def _post(
        self,
        request: web.Request,
        room: str,
        body: dict[str, Any] | MultiDictProxy[Any],
        key: str | None,
        arrived: float,
        *,
        guess: bool,
    ) -> tuple[Message, bool]:
        """Post as the caller; with ``guess``, as the session this worker read
        lately says it is, which the post confirms (a refusal it led to is
        :class:`SessionChanged` too, to be decided again afresh)."""
        try:
            user = await self.sessions.current_user(request, guess=guess)
            await self.sessions.check_may_post(user, room)
        except ChatError:
            if guessed_wrong(request):
                raise SessionChanged from None
            raise
        return await self.posting.post(
            room,
            user,
            body.get("text"),
            address=owner_of(request.remote),
            idempotency_key=key,
            arrived=arrived,
        )


class Operations:
    """The operators' endpoints: health and metrics."""

    __slots__ = ("metrics", "metrics_token", "redis", "worker_index")

    def __init__(
        self, redis: aioredis.Redis, metrics: Metrics, *, worker_index: int, metrics_token: str
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.worker_index = worker_index
        self.metrics_token = metrics_token

    async def healthz(self, request: web.Request) -> web.Response:
        body = {
            "status": "ok",
            "worker": self.worker_index,
            "pid": os.getpid(),
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }
        try:
            await self.redis.ping()
        except Exception:  # noqa: BLE001  any failure to reach Redis is "unhealthy"
            raise Unavailable("Redis is unreachable") from None
        return web.json_response(body)

    async def get_metrics(self, request: web.Request) -> web.Response:
        token = self.metrics_token
        if token and not _bearer(request, token):
            return error_response(
                401,
                "/metrics needs Authorization: Bearer <metrics_token>",
                code="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return web.Response(
            body=render_metrics(self.metrics),
            headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST, hdrs.CACHE_CONTROL: "no-store"},
        )


async def form_body(request: web.Request) -> dict[str, Any]:
    """An urlencoded form, refusing what is not UTF-8 (aiohttp would replace it silently)."""
    check_charset(request)
    raw = await request.read()
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("form body is not valid UTF-8") from None
    return dict(pairs)


def check_charset(request: web.Request) -> None:
    if request.charset and request.charset.lower() not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise BadRequest(f"bodies must be UTF-8, not {request.charset!r}")


def _bearer(request: web.Request, token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


async def json_body(request: web.Request) -> dict[str, Any]:
    check_charset(request)
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not valid UTF-8") from None
    return message_input.json_object(text, "body")
