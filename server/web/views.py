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
from ..core.errors import BadRequest, Unavailable, UnsupportedMediaType
from ..core.ids import parse_id
from ..core.model import Message
from ..core.names import clean_name
from ..store import failures
from ..store.broker import Broker
from ..store.connection_registry import ConnectionRegistry
from . import posting, sessions
from .addresses import owner_of
from .aiohttp_compat import protocol_of
from .middlewares import ThrottledErrorLog
from .posting import Posting
from .responses import error_response
from .sessions import Sessions
from .signin import expires_at

STATIC_DIR = pathlib.Path(__file__).parent / "static"
HISTORY_LIMIT_MAX = 200
# What a page of history may take (in characters of text, message_max_chars
# each at most), read from Redis and written at once: at the default 2000,
# 50 messages (the page's own request: one round trip), at 8000, 12.
HISTORY_PAGE_CHARS = 100_000
ONLINE_LIMIT_MAX = 1000


async def page(request: web.Request) -> web.StreamResponse:
    posting.room_name(request.match_info.get("room", "general"))
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def favicon(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC_DIR / "favicon.ico", headers={"Cache-Control": "public, max-age=86400"}
    )


class Api:
    """The chat's HTTP handlers (the session, history, presence, posting),
    with what they take."""

    __slots__ = ("broker", "history_page", "posting", "redis_errors", "registry", "sessions")

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
        # A page of history: as many messages as HISTORY_PAGE_CHARS may hold.
        self.history_page = max(1, HISTORY_PAGE_CHARS // posting.max_chars)

    async def get_session(self, request: web.Request) -> web.Response:
        user = await self.sessions.current_user(request)
        name = await self.sessions.display_name(request, user)
        identity = user.identity
        body = {
            "user_id": user.user_id,
            "name": name,
            "signed_in": identity is not None,
            "expires_at": None if identity is None else expires_at(identity),
            "can_rename": self.sessions.may_rename(user),
        }
        return web.json_response(body)

    async def put_session(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = clean_name(body.get("name"))
        user = await self.sessions.rename(request, name)
        ttl_s = sessions.NEW_SESSION_TTL_S if user.is_new else None
        await self.registry.set_name(user.user_id, name, ttl_s=ttl_s)
        return web.json_response({"user_id": user.user_id, "name": user.name})

    async def get_messages(self, request: web.Request) -> web.StreamResponse:
        room = posting.room_name(request.match_info["room"])
        await self.sessions.check_reader(request, room)
        limit = int_param(request, "limit", 50, HISTORY_LIMIT_MAX)
        before = request.query.get("before")
        before_id = None if before is None else parse_id(before)
        if before is not None and before_id is None:
            raise BadRequest("'before' must be a message id like 1700000000000-0")
        page = self.history_page
        messages, until = await self.broker.history(room, limit, before_id, page)
        if until is None:
            body = '{"messages":[' + ",".join(m.json for m in messages) + "]}"
            return web.Response(text=body, content_type="application/json")
        return await self._history_in_pages(request, room, messages, until, page)

    async def _history_in_pages(
        self, request: web.Request, room: str, messages: list[Message], until: str, page: int
    ) -> web.StreamResponse:
        """The same JSON as one page, written (chunked) a page at a time, each
        read only once the connection has taken the last: a client that reads
        slowly, or not at all, holds one page's bytes here, not a whole history."""
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.charset = "utf-8"
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD:
            return response  # (aiohttp would write what follows)
        broker = self.broker
        opening = '{"messages":['
        try:
            while messages:
                last = messages[-1].id
                chunk = (opening + ",".join(m.json for m in messages)).encode()
                opening, messages = ",", []  # (nothing but the bytes is kept meanwhile)
                await response.write(chunk)
                del chunk
                if last != until:
                    messages = await broker.history_after(room, last, until, page)
            await response.write(b"]}")
        except ConnectionError:
            pass  # the client left, or was cut off (see server.web.edge): the handler ends
        except failures.FAILURES as exc:
            # Too late for an error answer: the client sees the body end unfinished.
            self.redis_errors.record(exc, status=0)
            protocol_of(request).force_close()
        return response

    async def get_online(self, request: web.Request) -> web.Response:
        """A page of the room's online users in user id order: how big rooms are listed."""
        room = posting.room_name(request.match_info["room"])
        await self.sessions.check_reader(request, room)
        limit = int_param(request, "limit", 100, ONLINE_LIMIT_MAX)
        after = request.query.get("after") or None
        if after is not None and not sessions.USER_ID_RE.fullmatch(after):
            raise BadRequest("'after' must be a user id")
        online, count = await self.registry.presence.online_page(room, limit, after)
        return web.json_response({"online": online, "count": count})

    async def post_message(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        room = posting.room_name(request.match_info["room"])
        key = posting.idempotency_key(request.headers.get("Idempotency-Key"), "Idempotency-Key")
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
        posting.message_text(body.get("text"), self.posting.max_chars)
        user = await self.sessions.current_user(request)
        await self.sessions.check_may_post(user, room)
        message, replayed = await self.posting.post(
            room,
            user,
            body.get("text"),
            address=owner_of(request.remote),
            idempotency_key=key,
            arrived=arrived,
        )
        return web.Response(
            text='{"message":' + message.json + "}",
            status=201,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"'{name}' must be between 1 and {maximum}")
    return value


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
    return posting.json_object(text, "body")
