"""What it means that Redis failed: the one place that names the exceptions.

- :data:`FAILURES`: any call to Redis that did not do its work.
- :data:`UNREACHABLE`, a part of it: Redis could not be asked, or cannot
  answer yet; the same call may work a moment later (503, retry).
- :data:`LOST`, a part of that: the connection itself failed.
- the rest is Redis refusing the command: full (:func:`is_out_of_memory`,
  503 ``storage_full``), or a read-only replica.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What a call to Redis raises when Redis cannot serve it: redis-py's errors,
# the socket's, and those of its cluster client that are not RedisErrors
# (no primary serves a slot, during a failover).
FAILURES = (RedisError, RedisClusterException, OSError)
LOST = (RedisConnectionError, RedisTimeoutError, OSError)
# Still loading its data, or (a cluster) no primary for the slot yet.
UNREACHABLE = (*LOST, BusyLoadingError, RedisClusterException)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write because it reached ``maxmemory``.

    Redis 7 keeps the ``OOM`` code of an error raised inside a script
    (redis-py makes it an OutOfMemoryError); Redis 6.2 reports it as a script
    error that quotes it.
    """
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "-OOM command not allowed" in str(exc)
    )
