"""Every piece of state shared between handlers, as typed application keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .broker import Broker
    from .config import Config
    from .connections import Connections
    from .heartbeat import Heartbeat
    from .hub import Hub
    from .ratelimit import RateLimiter

CONFIG = web.AppKey["Config"]("config")
REDIS = web.AppKey["aioredis.Redis"]("redis")
BROKER = web.AppKey["Broker"]("broker")
HUB = web.AppKey["Hub"]("hub")
CONNECTIONS = web.AppKey["Connections"]("connections")
RATE_LIMITER = web.AppKey["RateLimiter"]("rate_limiter")
WORKER_INDEX = web.AppKey[int]("worker_index")
HEARTBEAT = web.AppKey["Heartbeat"]("heartbeat")
