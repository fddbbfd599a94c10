"""The worker's Redis clients, one async context manager each.

They are independent of each other (each opens its own pool), so the worker
can enter them concurrently with ``aiotools.actxgroup``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import AbstractConnection
from redis.driver_info import DriverInfo
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from ..common import asyncio_compat, redisurl
from ..common.config import Config
from . import connect
from .batch import SharingRedis
from .redis_compat import closed_by_redis, give_back, packed_by_hiredis
from .session_store import SignedRedisStorage, make_storage

# Python 3.11's wait_for, which redis-py writes every command under, would
# drop a cancellation now and then: see server.common.asyncio_compat.
asyncio_compat.install()

CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "health_check_interval": 15,
    "max_connections": 64,
    # When all are busy, wait this long for one: a burst of clients (after a
    # reload, say) queues briefly instead of getting 503 at once.
    "wait_s": 5.0,
    # Given once: redis-py 8 otherwise reads its version from the package
    # metadata (parsing it) for every new connection, a burst of which a
    # storm of clients causes.
    "driver_info": DriverInfo(lib_version=redis.__version__),
}


class WaitingPool(aioredis.ConnectionPool):
    """A pool where a burst waits (up to ``wait_s``) for a free connection
    instead of failing, and where taking and giving back a connection costs
    a list operation and one uncontended semaphore.

    redis-py's own pool takes a lock, reports to its observability hooks
    and polls the socket (a system call) on every command, and its
    BlockingConnectionPool adds a condition and a timeout: together most of
    the client-side cost of a command. What the poll guards against (a
    connection handed back with a reply unread) cannot happen here: redis-py
    disconnects a connection whose command was interrupted, and a
    disconnected connection connects again when next taken. No credential
    provider or maintenance notifications are used, which is what the
    pool's release events serve. Its connections pack commands with
    hiredis (:func:`~server.store.redis_compat.packed_by_hiredis`).

    A connection that Redis closed while it was idle (Redis restarted, or
    dropped idle clients) connects again before it is handed out, so that no
    request fails on a connection from before: the event loop has already
    read the end of its stream, which costs an attribute check to see.
    """

    def __init__(self, *args: Any, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_class = packed_by_hiredis(self.connection_class)
        self._wait_s = wait_s
        self._free = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        await _take(self._free, self._wait_s)
        try:
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._free.release()
            raise
        try:
            if connection.is_connected and closed_by_redis(connection):
                await connection.disconnect(nowait=True)
            if not connection.is_connected:
                await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        give_back(self, connection)
        self._free.release()


async def _take(free: asyncio.Semaphore, wait_s: float) -> None:
    """Take one of ``free``, waiting up to ``wait_s`` when none is: then a
    ConnectionError, which the server answers as Redis being unavailable."""
    if not free.locked():
        await free.acquire()  # free: returns at once
        return
    try:
        async with asyncio.timeout(wait_s):
            await free.acquire()
    except TimeoutError:
        raise RedisConnectionError("No connection available.") from None


CLUSTER_COMMANDS = 256  # in flight per cluster client; more wait for a turn

# Set while a task runs a command or pipeline of a WaitingCluster.
_IN_TURN: contextvars.ContextVar[bool] = contextvars.ContextVar("in_turn", default=False)


class WaitingCluster(aioredis.RedisCluster):
    """redis-py's cluster client, where a burst waits (up to ``wait_s``)
    instead of failing, as with :class:`WaitingPool`.

    Its nodes' pools raise MaxConnectionsError the moment all their
    connections are busy. Here every command and pipeline first takes one
    of ``commands`` turns; a redirected command that a pipeline sends again
    on its own runs in the pipeline's turn. A turn uses at most one
    connection per node, except for a moment after an error, when redis-py
    gives up on a command while its part on another node still runs: the
    nodes' pools allow twice the turns, so that never makes one refuse.
    (Transactions and the client's own pub/sub, which take connections
    without a turn, are not used: pub/sub has clients of its own.)
    """

    def __init__(self, *, wait_s: float, commands: int, **kwargs: Any) -> None:
        super().__init__(max_connections=2 * commands, **kwargs)
        self._wait_s = wait_s
        self._turns = asyncio.Semaphore(commands)

    async def in_turn(self, command: Callable[[], Awaitable[Any]]) -> Any:
        if _IN_TURN.get():
            return await command()
        await _take(self._turns, self._wait_s)
        token = _IN_TURN.set(True)
        try:
            return await command()
        finally:
            _IN_TURN.reset(token)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        run = super().execute_command
        return await self.in_turn(lambda: run(*args, **kwargs))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:  # (as redis-py's own refuses)
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]


class _WaitingPipeline(ClusterPipeline):
    cluster_client: WaitingCluster

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        run = super().execute
        return await self.cluster_client.in_turn(lambda: run(raise_on_error, allow_redirections))


def _client(url: str, *, decode_responses: bool) -> aioredis.Redis:
    """A client of one Redis, of a Redis Cluster or of the primary Sentinel names.

    A cluster client has the commands, scripts and pipelines of a plain one
    (pipelines split by node), so the rest of the server is written against
    one type, :class:`redis.asyncio.Redis`.
    """
    kind = redisurl.kind_of(url)
    if kind == "single":
        pool = WaitingPool.from_url(url, decode_responses=decode_responses, **CLIENT_OPTIONS)
        return SharingRedis.from_pool(pool)
    if kind == "cluster":
        options = {
            name: value for name, value in CLIENT_OPTIONS.items() if name != "max_connections"
        }
        options["commands"] = CLUSTER_COMMANDS
        return cast(
            aioredis.Redis,
            WaitingCluster.from_url(
                redisurl.node_url(url), decode_responses=decode_responses, **options
            ),
        )
    options = {name: value for name, value in CLIENT_OPTIONS.items() if name != "wait_s"}
    client = connect.async_client(
        url, decode_responses=decode_responses, redis_class=SharingRedis, **options
    )
    return cast(aioredis.Redis, client)


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
