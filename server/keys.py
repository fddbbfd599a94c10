"""Every piece of state shared between handlers, as typed application keys."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from .broker import Broker
from .config import Config
from .connections import Connections
from .heartbeat import Heartbeat
from .hub import Hub
from .metrics import Metrics
from .middlewares import ThrottledErrorLog
from .ratelimit import Budgets, RateLimiter

CONFIG = web.AppKey("config", Config)
REDIS = web.AppKey("redis", aioredis.Redis)
BROKER = web.AppKey("broker", Broker)
HUB = web.AppKey("hub", Hub)
CONNECTIONS = web.AppKey("connections", Connections)
HEARTBEAT = web.AppKey("heartbeat", Heartbeat)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
BUDGETS = web.AppKey("budgets", Budgets)
WORKER_INDEX = web.AppKey("worker_index", int)
METRICS = web.AppKey("metrics", Metrics)
REDIS_ERRORS = web.AppKey("redis_errors", ThrottledErrorLog)
