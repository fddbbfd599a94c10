"""What the Redis clients rely on of redis-py beyond its documented API, in one place.

Checked on redis-py 8.1.0 and 8.2.0 (asyncio) with hiredis 3.5;
``tests/test_compat_redis.py`` fails when one of these changes, or when a
private name of the worker's pool or cluster client (``_wait_s``, ``_free``,
``_turns``) becomes one of redis-py's. Check them against a new release.

- ``ConnectionPool._available_connections`` (a list of idle connections,
  taken from its end) and ``_in_use_connections`` (a set, a WeakSet after
  ``reset()``, of those handed out): :class:`~server.store.clients.WaitingPool`
  gives a connection back with :func:`give_back`, without redis-py's lock,
  observability hooks and socket poll. (Taking one is documented:
  ``get_available_connection()``.)
- ``AbstractConnection._reader``: the ``asyncio.StreamReader`` of a
  connected connection, where the event loop puts the end of the stream
  when Redis closes it (:func:`closed_by_redis`).
- Every command, and every command of a pipeline (``pack_commands``), is
  packed by the connection's ``pack_command(*args) -> list[bytes]``: a
  connection class that overrides it packs them all
  (:func:`packed_by_hiredis`).
- ``Pipeline(connection_pool, response_callbacks, transaction, shard_hint)``
  is how ``Redis.pipeline()`` makes one; a pipeline's ``execute()`` runs on
  its ``connection`` when one is set, and ``reset()`` (which ``execute()``
  ends with) gives that back to the pool; a connection reads every reply
  under its ``socket_timeout`` and writes under ``asyncio.wait_for`` with
  it, and does neither when it is None (:class:`OneDeadlinePipeline`);
  its ``command_stack`` is the list of the commands queued, in order, as
  ``(args, options)`` (:func:`drop_after`, and
  :meth:`~server.store.batch.Batch.plain_commands`, which hands a batch's
  commands to a script).

Documented, so not here: the pools' ``make_connection()`` and
``connection_class``, the connections' ``connect()``, ``read_response()``,
``pack_command()`` and ``send_packed_command()`` (pub/sub speaks to its
connections with these), ``ClusterPipeline(client, transaction)`` and the
clients' ``execute_command``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The releases these were checked on (tests/test_compat_redis.py says when
# another is installed: check it, then add it).
CHECKED_ON = ("8.1.0", "8.2.0")


def give_back(pool: aioredis.ConnectionPool, connection: AbstractConnection) -> None:
    """Put a connection that ``pool`` handed out back among its idle ones."""
    pool._in_use_connections.discard(connection)
    pool._available_connections.append(connection)


def closed_by_redis(connection: AbstractConnection) -> bool:
    """Whether the event loop has seen Redis end the connection's stream
    (an attribute check: no system call)."""
    reader: asyncio.StreamReader | None = getattr(connection, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


class _PackedByHiredis:
    """Commands packed into RESP by hiredis, in C, their arguments as they are.

    redis-py's asyncio connections encode every argument in Python (then
    8.2 packs them with hiredis, 8.1 in Python): some 8-9 us for a script
    call with a dozen arguments, against 2 us here. The output is the same bytes (a
    command name with a space in it, such as "CONFIG SET", is split into
    words first, as redis-py does).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class _Connection(_PackedByHiredis, aioredis.Connection):
    pass


class _UnixConnection(_PackedByHiredis, aioredis.UnixDomainSocketConnection):
    pass


class _SSLConnection(_PackedByHiredis, aioredis.SSLConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    aioredis.Connection: _Connection,
    aioredis.UnixDomainSocketConnection: _UnixConnection,
    aioredis.SSLConnection: _SSLConnection,
}


def packed_by_hiredis(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class``, its commands packed by hiredis (a class of
    redis-py's own; any other is given back as it is)."""
    return _PACKED.get(connection_class, connection_class)


class OneDeadlinePipeline(Pipeline):
    """A pipeline (no transaction) with one deadline for all of it, the
    connection's ``socket_timeout``, rather than one for each reply.

    redis-py reads every reply of a pipeline under a timeout of its own (a
    timer made and cancelled for each) and writes under ``asyncio.wait_for``
    (a task for each write, on Python 3.11): for pipelines of many short
    commands, a tenth of what a request costs this server. Here the
    connection is taken first and its ``socket_timeout`` set aside until
    it goes back to the pool: past the deadline the pipeline is cancelled
    (redis-py then drops the connection, its replies unread) and
    ``redis.exceptions.TimeoutError`` is raised, as for a read that timed out.
    """

    _set_aside: tuple[AbstractConnection, float | None] | None = None

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis.connection_pool, redis.response_callbacks, False, None)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self.command_stack:
            return []
        connection: AbstractConnection = await self.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        deadline = connection.socket_timeout
        self.connection = connection  # type: ignore[assignment]
        self._set_aside = (connection, deadline)
        connection.socket_timeout = None
        try:
            async with asyncio.timeout(deadline):
                return await super().execute(raise_on_error)
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout running a pipeline: over {deadline} s") from None

    async def reset(self) -> None:  # type: ignore[override]
        set_aside, self._set_aside = self._set_aside, None
        if set_aside is not None:
            connection, deadline = set_aside
            connection.socket_timeout = deadline
        await super().reset()  # type: ignore[no-untyped-call]


def drop_after(pipe: Pipeline, length: int) -> None:
    """Take the commands queued on ``pipe`` after its first ``length`` off it."""
    del pipe.command_stack[length:]
