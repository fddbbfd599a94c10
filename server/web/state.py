"""Every piece of state shared between handlers, as typed application keys.

A leaf: the types are named for the type checker only, so that any module
may import this one without importing the rest of the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..common.config import Config
    from ..common.metrics import Metrics
    from ..core.hub import Hub
    from ..core.presence import Announcer
    from ..store.broker import Broker
    from ..store.connection_registry import ConnectionRegistry
    from ..store.ratelimit import Budgets, RateLimiter
    from .heartbeat import Heartbeat
    from .middlewares import ThrottledErrorLog

CONFIG: web.AppKey[Config] = web.AppKey("config")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
BROKER: web.AppKey[Broker] = web.AppKey("broker")
HUB: web.AppKey[Hub] = web.AppKey("hub")
CONNECTIONS: web.AppKey[ConnectionRegistry] = web.AppKey("connections")
ANNOUNCER: web.AppKey[Announcer] = web.AppKey("announcer")
HEARTBEAT: web.AppKey[Heartbeat] = web.AppKey("heartbeat")
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")
BUDGETS: web.AppKey[Budgets] = web.AppKey("budgets")
WORKER_INDEX: web.AppKey[int] = web.AppKey("worker_index")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
REDIS_ERRORS: web.AppKey[ThrottledErrorLog] = web.AppKey("redis_errors")
