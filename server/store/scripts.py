"""Lua scripts, registered for the Redis at hand (one server, or a cluster).

They are run by :class:`server.store.batch.Batch`."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript


def publish_command(redis: aioredis.Redis) -> str:
    """PUBLISH, or SPUBLISH on a Redis Cluster.

    A room's channel carries the room's hash tag, so on a cluster it is a
    shard channel in the slot of the room's keys: only subscribers of that
    shard's primary hear it (not every node), and a script that touches the
    room's keys may publish on it.
    """
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"


def register(redis: aioredis.Redis, text: str) -> AsyncScript:
    """``text`` as a script of ``redis``, publishing with :func:`publish_command`."""
    command = publish_command(redis)
    return redis.register_script(text.replace("redis.call('PUBLISH'", f"redis.call('{command}'"))
