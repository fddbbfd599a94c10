"""The worker's long-lived Redis resources, one async context manager each.

They are independent of each other (each opens its own pool), so the worker
can enter them concurrently with ``aiotools.actxgroup``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from .config import Config
from .sessions import SignedRedisStorage, make_storage

CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 15,
}


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """The worker's main client: strings in and out, a pool shared by all handlers."""
    client = aioredis.Redis.from_url(url, decode_responses=True, **CLIENT_OPTIONS)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def session_store(url: str, config: Config, secret: str) -> AsyncIterator[SignedRedisStorage]:
    """aiohttp-session's store on a pool of its own (it needs bytes, not strings)."""
    client = aioredis.Redis.from_url(url, decode_responses=False, **CLIENT_OPTIONS)
    try:
        await client.ping()
        yield make_storage(
            client,
            secret=secret,
            max_age=config.session_max_age_s,
            secure=config.cookie_secure,
        )
    finally:
        await client.aclose()
