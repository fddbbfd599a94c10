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
- ``Pipeline.command_stack``: the list of ``(args, options)`` a plain
  pipeline sends, in order, by which :mod:`server.store.rounds` moves a
  batch's commands into the pipeline it shares with others.

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
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError

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
