"""Running Lua scripts in pipelines: one round trip, by sha."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[AsyncScript, list[str], list[Any]]  # a script, its keys and its arguments


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


async def run(redis: aioredis.Redis, *calls: Call, pipe: Pipeline | None = None) -> list[Any]:
    """Run scripts in one round trip (after what ``pipe`` already holds); their
    replies, in order.

    By sha: redis-py's own pipeline would ask Redis whether they exist on
    every call. A script Redis lost (a restart) is loaded and run again.
    """
    return (await run_after(redis, pipe or redis.pipeline(transaction=False), *calls))[1]


async def run_after(
    redis: aioredis.Redis, pipe: Pipeline, *calls: Call
) -> tuple[list[Any], list[Any]]:
    """:func:`run`, also answering what ``pipe`` held before: (its replies, the scripts')."""
    skip = len(pipe)
    for script, keys, args in calls:
        # As a plain command: redis-py refuses pipe.evalsha on a Redis Cluster,
        # though its pipelines route EVALSHA by its keys like any other command.
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    replies = await pipe.execute(raise_on_error=False)
    before = replies[:skip]
    for reply in before:
        if isinstance(reply, Exception):
            raise reply
    replies = replies[skip:]
    for n, reply in enumerate(replies):
        if isinstance(reply, NoScriptError):
            script, keys, args = calls[n]
            replies[n] = await script(keys=keys, args=args)
        elif isinstance(reply, Exception):
            raise reply
    return before, replies
