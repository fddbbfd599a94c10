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
    "max_connections": 64,
    # When all are busy, wait this long for one: a burst of clients (after a
    # reload, say) queues briefly instead of getting 503 at once.
    "timeout": 5,
}


def _client(url: str, *, decode_responses: bool) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=decode_responses, **CLIENT_OPTIONS
    )
    return aioredis.Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[aioredis.Redis]:
    """The worker's main client: strings in and out, a pool shared by all handlers."""
    client = _client(url, decode_responses=True)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def session_store(url: str, config: Config, secret: str) -> AsyncIterator[SignedRedisStorage]:
    """aiohttp-session's store on a pool of its own (it needs bytes, not strings)."""
    client = _client(url, decode_responses=False)
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
