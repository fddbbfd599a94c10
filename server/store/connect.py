"""A Redis client of whatever a Redis URL names (see :mod:`server.common.redisurl`):
one server, a cluster, or the primary of a Sentinel service."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from ..common.redisurl import kind_of, node_url, sentinels


@dataclasses.dataclass(frozen=True)
class _Classes:
    """redis-py's client classes, blocking or asyncio."""

    single: Any
    cluster: Any
    sentinel: Any


_BLOCKING = _Classes(redis.Redis, redis.RedisCluster, redis.sentinel.Sentinel)
_ASYNCIO = _Classes(
    redis.asyncio.Redis, redis.asyncio.RedisCluster, redis.asyncio.sentinel.Sentinel
)


def _client(url: str, classes: _Classes, options: dict[str, Any]) -> Any:
    kind = kind_of(url)
    if kind == "cluster":
        options.pop("redis_class", None)
        return classes.cluster.from_url(node_url(url), **options)
    single = options.pop("redis_class", classes.single)
    if kind == "single":
        return single.from_url(url, **options)
    found = sentinels(url)
    sentinel = classes.sentinel(
        found.addresses,
        sentinel_kwargs={
            "password": found.sentinel_password,
            "socket_connect_timeout": options.get("socket_connect_timeout", 2),
            "socket_timeout": options.get("socket_timeout", 2),
        },
        **options,
    )
    return sentinel.master_for(
        found.service,
        redis_class=single,
        db=found.db,
        username=found.username,
        password=found.password,
    )


def blocking_client(url: str, **options: Any) -> Any:
    """A blocking client of whatever ``url`` names, for the main process."""
    return _client(url, _BLOCKING, options)


def async_client(url: str, **options: Any) -> Any:
    """An asyncio client of whatever ``url`` names (``redis_class``: the
    class of a client of one server, or of the primary a Sentinel names)."""
    return _client(url, _ASYNCIO, options)


def is_cluster_node(client: redis.Redis) -> bool:
    """Whether the server behind a plain client is a Redis Cluster node."""
    info = client.info("cluster")
    return bool(info.get("cluster_enabled"))
