"""What it means that Redis failed: the one list of exceptions, and a full Redis."""

from __future__ import annotations

from redis.exceptions import OutOfMemoryError, RedisClusterException, RedisError, ResponseError

# What a call to Redis raises when Redis cannot serve it: redis-py's errors,
# the socket's, and those of its cluster client that are not RedisErrors
# (no primary serves a slot, during a failover).
FAILURES = (RedisError, RedisClusterException, OSError)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write because it reached ``maxmemory``.

    Redis 7 keeps the ``OOM`` code of an error raised inside a script
    (redis-py makes it an OutOfMemoryError); Redis 6.2 reports it as a script
    error that quotes it.
    """
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "-OOM command not allowed" in str(exc)
    )
