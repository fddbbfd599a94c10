"""The worker's long-lived Redis resources, one async context manager each.

They are independent of each other (each opens its own pool), so the worker
can enter them concurrently with ``aiotools.actxgroup``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from .config import Config
from .sessions import SignedRedisStorage, make_storage

CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 15,
    "max_connections": 64,
    # When all are busy, wait this long for one: a burst of clients (after a
    # reload, say) queues briefly instead of getting 503 at once.
    "wait_s": 5.0,
}


class WaitingPool(aioredis.ConnectionPool):
    """A pool where a burst waits (up to ``wait_s``) for a free connection instead of failing.

    redis-py's BlockingConnectionPool does the same but enters a condition
    and a timeout on every command, which cost a fifth of a worker's CPU per
    message; here a command that finds a connection free pays for one
    uncontended semaphore, and only one that has to wait sets a timeout.
    """

    def __init__(self, *args: Any, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wait_s = wait_s
        self._free = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._free.locked():
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await self._free.acquire()  # free: returns at once
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call,no-any-return]
        except BaseException:
            self._free.release()
            raise

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._free.release()


def _client(url: str, *, decode_responses: bool) -> aioredis.Redis:
    pool = WaitingPool.from_url(url, decode_responses=decode_responses, **CLIENT_OPTIONS)
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
