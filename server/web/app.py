"""The aiohttp application factory: routes, middlewares, state and background tasks."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_session
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler

from ..common.config import Config
from ..common.metrics import Metrics
from ..core.hub import Hub
from ..core.presence import Announcer
from ..core.replay import replay_page
from ..store import failures
from ..store.broker import Broker
from ..store.connection_registry import ConnectionRegistry
from ..store.ratelimit import Budgets, RateLimiter
from ..store.relay import Relay
from ..store.session_store import SignedRedisStorage
from . import middlewares, views
from . import state as keys
from .heartbeat import Heartbeat, LoopWatch
from .transports import sse, ws

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


def create_app(
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
    app = web.Application(
        client_max_size=config.body_max_bytes,
        middlewares=[
            middlewares.guard(config),
            aiohttp_session.session_middleware(session_storage),
        ],
    )
    metrics = Metrics(worker_index, metrics_dir)
    broker = Broker(redis, history_len=config.history_len, room_ttl_s=config.room_ttl_s)
    relay = Relay(redis_url, broker, metrics)
    hub = Hub(
        relay,
        buffer_limit=config.send_buffer_messages,
        idle_timeout_s=config.idle_timeout_s,
        metrics=metrics,
        replays=config.replays_per_worker,
        replay_page=replay_page(config.message_max_chars),
    )
    connections = ConnectionRegistry(
        redis,
        uuid.uuid4().hex[:12],
        ttl_s=2 * config.heartbeat_s,
        per_session_limit=config.streams_per_session,
        per_address_limit=config.address_streams,
        name_ttl_s=config.session_max_age_s,
    )
    app[keys.CONFIG] = config
    app[keys.REDIS] = redis
    app[keys.BROKER] = broker
    app[keys.HUB] = hub
    app[keys.CONNECTIONS] = connections
    app[keys.METRICS] = metrics
    app[keys.HEARTBEAT] = heartbeat = Heartbeat(hub, connections, config)
    app[keys.ANNOUNCER] = announcer = Announcer(
        hub, connections.presence.read, config.presence_list_max, failures.FAILURES
    )
    relay.deliver_to(hub.dispatch, announcer.announce_soon)
    app[keys.RATE_LIMITER] = RateLimiter(redis, metrics)
    app[keys.BUDGETS] = Budgets.from_config(config)
    app[keys.WORKER_INDEX] = worker_index
    app[keys.REDIS_ERRORS] = middlewares.ThrottledErrorLog(count=metrics.redis_error)

    async def live_delivery(app: web.Application) -> AsyncIterator[None]:
        relaying = asyncio.create_task(relay.run(), name="relay")
        watch = LoopWatch(metrics)
        watch.start()
        heartbeat.frozen.start()
        yield
        heartbeat.frozen.stop()
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
        # Documents and their assets need the policy; a stream (SSE, or a
        # WebSocket's 101) is never rendered, and keeps its headers for as
        # long as it is open: thousands of copies for nothing.
        if response.status != 101 and response.content_type != "text/event-stream":
            response.headers.update(SECURITY_HEADERS)

    async def stop_announcing(app: web.Application) -> None:
        await announcer.close()

    app.cleanup_ctx.append(live_delivery)
    app.on_cleanup.append(stop_announcing)
    app.on_shutdown.append(close_streams)
    app.on_response_prepare.append(tag_worker)

    add_routes(app)
    return app


def _stream(path: str, handler: Handler, **kwargs: Any) -> web.RouteDef:
    """A stream's route: GET only. (aiohttp would let HEAD run the handler,
    which registers the stream before aiohttp-sse refuses the method.)"""
    return web.get(path, handler, allow_head=False, **kwargs)


def add_routes(app: web.Application) -> None:
    """The page, the API and the operators' endpoints; anything else is a JSON 404."""
    page = [
        (web.get, "/", views.page),
        (web.get, "/rooms/{room}", views.page),
        (web.get, "/favicon.ico", views.favicon),
    ]
    api = [
        (web.get, "/api/session", views.get_session),
        (web.put, "/api/session", views.put_session),
        (web.get, "/api/rooms/{room}/messages", views.get_messages),
        (web.post, "/api/rooms/{room}/messages", views.post_message),
        (web.get, "/api/rooms/{room}/online", views.get_online),
        (_stream, "/api/rooms/{room}/events", sse.events),
        (_stream, "/api/rooms/{room}/ws", ws.websocket),
    ]
    operations = [(web.get, "/healthz", views.healthz), (web.get, "/metrics", views.metrics)]
    # Every route answers Expect itself (see middlewares.expect_continue).
    expect = middlewares.expect_continue
    routes = [*page, *api, *operations]
    app.add_routes([route(path, handler, expect_handler=expect) for route, path, handler in routes])
    app.router.add_static("/static", views.STATIC_DIR, expect_handler=expect)
    app.router.add_route("*", "/{path:.*}", middlewares.unrouted, expect_handler=expect)
