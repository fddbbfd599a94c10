"""The aiohttp application factory: routes, middlewares, state and background tasks."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ..common.config import Config
from ..common.metrics import Metrics
from ..core.hub import Hub
from ..core.presence import Announcer
from ..core.replay import replay_page
from ..store import failures
from ..store.broker import Broker
from ..store.connection_registry import ConnectionRegistry
from ..store.edits import Edits
from ..store.outbox import Outbox
from ..store.ratelimit import Budgets, RateLimiter
from ..store.read_marks import ReadMarks
from ..store.relay import Relay
from ..store.session_store import SignedRedisStorage
from . import middlewares, server_api, views
from . import state as keys
from .auth import AuthApi
from .heartbeat import Heartbeat, LoopWatch
from .messages import Messages
from .moderation import Moderation
from .openapi import OpenApiDocument
from .posting import Posting
from .rooms import Rooms
from .sessions import NEW_SESSION_TTL_S, Sessions
from .signin import SignIn
from .transports import sse, ws
from .transports.connection import Connections
from .typing_notices import Typing

WORKER_HEADER = "X-Chat-Worker"  # index of the worker that served the request
PID_HEADER = "X-Chat-Pid"  # and its process id, which changes when it is replaced
# The page loads nothing but its own files and never inlines script or style,
# so a strict policy costs nothing and blunts any injection that slips by.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(  # noqa: PLR0915  (every service is wired together here, once)
    config: Config,
    *,
    redis: aioredis.Redis,
    session_storage: SignedRedisStorage,
    redis_url: str,
    worker_index: int = 0,
    metrics_dir: str | None = None,
) -> web.Application:
    """Build the chat app on an open Redis client and session store (owned by the caller).

    ``metrics_dir``: the instance's metrics directory, shared by its
    processes (see :mod:`server.common.metrics`); without it, the app counts alone.
    """
    metrics = Metrics(worker_index, metrics_dir)
    redis_errors = middlewares.ThrottledErrorLog(count=metrics.redis_error)
    sign_in = SignIn(config)
    app = web.Application(
        client_max_size=config.body_max_bytes,
        middlewares=[
            middlewares.guard(config, redis_errors, sign_in),
            middlewares.sessions(session_storage, STREAM_PATHS),
        ],
    )
    broker = Broker(
        redis,
        history_len=config.history_len,
        room_ttl_s=config.room_ttl_s,
        # Webhook events are written with what they report (none without a
        # webhook_url); the instance's webhook deliverer process sends them.
        outbox=Outbox(redis, config.webhook_events) if config.webhook_url else None,
    )
    relay = Relay(redis_url, broker, metrics)
    hub = Hub(
        relay,
        buffer_limit=config.send_buffer_messages,
        idle_timeout_s=config.idle_timeout_s,
        metrics=metrics,
        replays=config.replays_per_worker,
        replay_page=replay_page(config.message_max_chars),
    )
    registry = ConnectionRegistry(
        redis,
        uuid.uuid4().hex[:12],
        ttl_s=2 * config.heartbeat_s,
        per_session_limit=config.streams_per_session,
        per_address_limit=config.address_streams,
        name_ttl_s=config.session_max_age_s,
        outbox=broker.outbox,
    )
    # (Also writes the rooms' activity, once a tick: see server.store.room_registry.)
    heartbeat = Heartbeat(hub, registry, config, on_tick=[broker.rooms.flush])
    announcer = Announcer(hub, registry.presence.read, config.presence_list_max, failures.FAILURES)
    # What aiohttp's lifecycle, the worker and the tests reach for.
    app[keys.CONFIG] = config
    app[keys.HUB] = hub
    app[keys.METRICS] = metrics
    app[keys.HEARTBEAT] = heartbeat
    app[keys.ANNOUNCER] = announcer
    app[keys.SIGN_IN] = sign_in
    app[keys.MODERATION] = Moderation(redis)  # (what the server API will call)
    # The services the handlers are built with.
    limiter = RateLimiter(redis, metrics)
    budgets = Budgets.from_config(config)
    sessions = Sessions(redis, limiter, budgets, sign_in)
    posting = Posting(
        redis,
        broker,
        limiter,
        budgets,
        metrics,
        max_chars=config.message_max_chars,
        # A user's rooms live as long as an anonymous user's session, or a silent room.
        read_marks=ReadMarks(
            redis,
            anonymous_ttl_s=config.session_max_age_s,
            new_ttl_s=NEW_SESSION_TTL_S,
            signed_in_ttl_s=config.room_ttl_s,
        ),
    )
    typing = Typing(sessions, redis, limiter, budgets, hub, list_max=config.presence_list_max)
    relay.deliver_to(hub.dispatch, announcer.announce_soon, hub.signed_out, hub.disconnected)
    relay.on_typing, relay.on_reconnected = typing.arrived, registry.out_of_step.suspect
    # (Its delete is what the server API will call.)
    app[keys.MESSAGES] = Messages(
        sessions,
        posting,
        Edits(
            redis,
            history_len=config.history_len,
            room_ttl_s=config.room_ttl_s,
            outbox=broker.outbox,
        ),
        edit_window_s=config.edit_window_s,
    )
    connections = Connections(
        hub,
        registry,
        sessions,
        announcer,
        limiter,
        redis,
        metrics,
        streams_per_session=config.streams_per_session,
        address_streams=config.address_streams,
    )
    add_routes(
        app,
        api=views.Api(sessions, posting, broker, registry, redis_errors),
        messages=app[keys.MESSAGES],
        typing=typing,
        rooms=Rooms(sessions, limiter, posting.read_marks, config),
        auth=AuthApi(sessions, registry),
        operations=views.Operations(
            redis, metrics, worker_index=worker_index, metrics_token=config.metrics_token
        ),
        events=sse.SseHandler(sessions, connections, send_timeout_s=config.idle_timeout_s),
        websockets=ws.WsHandler(
            sessions,
            connections,
            posting,
            typing,
            redis_errors,
            metrics,
            max_msg_size=config.body_max_bytes,
        ),
        server=server_api.install(
            app,
            posting,
            registry.presence,
            app[keys.MODERATION],
            app[keys.MESSAGES],
            redis_errors,
        ),
        document=OpenApiDocument(config),
    )

    async def live_delivery(app: web.Application) -> AsyncIterator[None]:
        relaying = asyncio.create_task(relay.run(), name="relay")
        watch = LoopWatch(metrics)
        watch.start()
        heartbeat.frozen.start()
        yield
        heartbeat.frozen.stop()
        await heartbeat.expiries.close()
        watch.stop()
        await relay.stop(relaying)

    async def close_streams(app: web.Application) -> None:
        # Runs once the site has stopped accepting, so a client that
        # reconnects at once reaches another worker. Streams never end by
        # themselves: without this, shutdown would wait for them until
        # aiohttp's shutdown timeout.
        hub.close_all(hub.stop_reason)

    pid = str(os.getpid())

    async def tag_worker(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = str(worker_index)
        response.headers[PID_HEADER] = pid
        if hub.draining:
            # This worker is going: the client's next request goes elsewhere.
            response.force_close()
        # Documents and their assets need the policy; a stream (SSE, or a
        # WebSocket's 101) is never rendered. (The header is read as it is:
        # ``content_type`` would keep its parse on the response, a larger
        # ``__dict__`` for every open stream.)
        content_type = response.headers.get(hdrs.CONTENT_TYPE, "")
        if response.status != 101 and not content_type.startswith(EVENT_STREAM):
            response.headers.update(SECURITY_HEADERS)

    async def stop_announcing(app: web.Application) -> None:
        await announcer.close()
        await registry.stop()

    app.cleanup_ctx.extend([sign_in.lifetime(), live_delivery])
    app.on_cleanup.append(stop_announcing)
    app.on_shutdown.append(close_streams)
    app.on_response_prepare.append(tag_worker)
    return app


EVENT_STREAM = "text/event-stream"
EVENTS_PATH = "/api/rooms/{room}/events"
WEBSOCKET_PATH = "/api/rooms/{room}/ws"
STREAM_PATHS = frozenset({EVENTS_PATH, WEBSOCKET_PATH})


def _stream(path: str, handler: Handler, **kwargs: Any) -> web.RouteDef:
    """A stream's route: GET only. (aiohttp would let HEAD run the handler,
    which registers the stream before aiohttp-sse refuses the method.)"""
    return web.get(path, handler, allow_head=False, **kwargs)


def add_routes(
    app: web.Application,
    *,
    api: views.Api,
    messages: Messages,
    typing: Typing,
    rooms: Rooms,
    auth: AuthApi,
    operations: views.Operations,
    events: sse.SseHandler,
    websockets: ws.WsHandler,
    document: OpenApiDocument,
    server: Sequence[tuple[Any, str, Handler]] = (),
) -> None:
    """The page, the API and the operators' endpoints, each handler a method
    of the object that holds what it needs (``server``: the server API's,
    when it has keys); anything else is a JSON 404."""
    page = [
        (web.get, "/", views.page),
        (web.get, "/rooms/{room}", views.page),
        (web.get, "/favicon.ico", views.favicon),
    ]
    chat = [
        (web.get, "/api/session", api.get_session),
        (web.put, "/api/session", api.put_session),
        (web.get, "/api/rooms/{room}/messages", api.get_messages),
        (web.post, "/api/rooms/{room}/messages", api.post_message),
        (web.patch, "/api/rooms/{room}/messages/{id}", messages.patch_message),
        (web.delete, "/api/rooms/{room}/messages/{id}", messages.delete_message),
        (web.get, "/api/rooms/{room}/online", api.get_online),
        (web.post, "/api/rooms/{room}/typing", typing.post_typing),
        (web.get, "/api/rooms", rooms.get_rooms),
        (web.put, "/api/rooms/{room}/read", rooms.put_read),
        (web.post, "/api/auth", auth.sign_in),
        (web.delete, "/api/auth", auth.sign_out),
        (_stream, EVENTS_PATH, events.events),
        (_stream, WEBSOCKET_PATH, websockets.websocket),
    ]
    operators = [
        (web.get, "/healthz", operations.healthz),
        (web.get, "/metrics", operations.get_metrics),
        (web.get, "/openapi.json", document.get),
    ]
    # Every route answers Expect itself (see middlewares.expect_continue).
    expect = middlewares.expect_continue
    routes = [*page, *chat, *server, *operators]
    app.add_routes([route(path, handler, expect_handler=expect) for route, path, handler in routes])
    app.router.add_static("/static", views.STATIC_DIR, expect_handler=expect)
    app.router.add_route("*", "/{path:.*}", middlewares.unrouted, expect_handler=expect)
