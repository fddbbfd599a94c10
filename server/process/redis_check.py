"""What the server needs of the Redis it is given, checked once at start.

The main process asks each server the workers will use (the one Redis, the
primary that Sentinel names, or every node of a cluster) whether it knows
the commands the server sends (``COMMAND INFO``: nil for a command it does
not have, or that its configuration renamed away), and tries the one thing
the server relies on that no command name tells: reading a stream after an
exclusive start (Redis 6.2). A Redis that falls short is refused with one
line that names what it lacks and the version that has it; accepted, it
would fail request after request.

Commands are asked for by name rather than inferred from the version,
which forks (Valkey, KeyDB, Dragonfly) report in their own ways; the
version is only named in the message.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import redis
from redis.exceptions import ResponseError

from ..common import redisurl
from ..store import connect, failures

log = logging.getLogger("chat-server")

# Every command the server sends, by itself or from its scripts, but the
# pub/sub ones, which depend on the kind of Redis (tests/test_redis_check.py
# holds the scripts to this list). XINFO is left out: the server does
# without it.
COMMANDS = (
    *("DEL", "EXISTS", "EXPIRE", "PEXPIRE", "PEXPIREAT", "GET", "SET", "TIME"),
    *("HDEL", "HGET", "HINCRBY", "HKEYS", "HLEN", "HMGET", "HSCAN", "HSET", "HVALS"),
    *("PERSIST", "SCAN", "SADD", "SCARD", "SMEMBERS", "SREM"),
    *("ZADD", "ZCARD", "ZRANGE", "ZRANGEBYLEX", "ZRANGEBYSCORE", "ZREM", "ZREMRANGEBYSCORE"),
    *("ZREMRANGEBYRANK", "ZSCORE", "PTTL"),
    *("XADD", "XDEL", "XLEN", "XRANGE", "XREVRANGE"),
    *("EVALSHA", "SCRIPT", "PING", "INFO"),
)
PUBSUB = ("PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE")
# A cluster's live delivery: a room's shard channel (server.store.pubsub, server.store.scripts).
SHARDED_PUBSUB = ("SSUBSCRIBE", "SPUBLISH", "SUNSUBSCRIBE")

MINIMUM = (6, 2)  # reading a stream after an exclusive start: XRANGE key (id +
CLUSTER_MINIMUM = (7, 0)  # sharded pub/sub

# Read with an exclusive start, which Redis before 6.2 refuses as an invalid
# id. The key is never written.
PROBE_KEY = "chat:check"


class UnfitRedis(RuntimeError):
    """The Redis lacks something the server needs; the message says what."""


@dataclasses.dataclass(frozen=True)
class Server:
    """What one Redis server said of itself."""

    name: str  # host:port, for a node of a cluster
    product: str  # "Redis 7.0.15", "Valkey 8.0.1"
    version: tuple[int, ...] | None  # redis_version, which forks keep at the level they match
    missing: tuple[str, ...]


def check(url: str, shown: str) -> str:
    """Refuse (:class:`UnfitRedis`) the Redis ``url`` names if the server cannot
    use it; else say what it is, for the log. ``shown``: the URL as the user
    gave it, without its passwords.

    A Redis that does not answer raises one of :data:`failures.FAILURES`.
    """
    if redisurl.kind_of(url) == "cluster":
        return _check_cluster(redisurl.node_url(url), shown)
    client = _blocking(url)
    try:
        server = _server(client, "", (*COMMANDS, *PUBSUB))
        if server.missing:
            subject = f"Redis at {shown} is {server.product}, which lacks"
            raise UnfitRedis(_refusal(subject, [server], MINIMUM))
        _check_stream_ranges(client, shown, server.product)
        return server.product
    finally:
        client.close()


def _check_cluster(url: str, shown: str) -> str:
    """Every node the named one knows, replicas too (each may be a primary
    tomorrow); the stream probe is left out: a node with sharded pub/sub
    (7.0) reads exclusive ranges (6.2) too."""
    client = _blocking(url)
    try:
        nodes = client.cluster("NODES")
    finally:
        client.close()
    needed = (*COMMANDS, *SHARDED_PUBSUB)
    servers = []
    for listed, node in sorted(nodes.items()):
        if any(flag in node["flags"].split(",") for flag in ("fail", "noaddr", "handshake")):
            continue
        # (":port": a node that does not know its own address yet)
        address = redisurl.address_of(url) + listed if listed.startswith(":") else listed
        client = _blocking(redisurl.at_address(url, address))
        try:
            servers.append(_server(client, address, needed))
        except failures.FAILURES as exc:
            # A node that is down now is no reason to refuse the cluster;
            # the nodes that answered speak for it.
            log.warning("cannot check the Redis Cluster node %s (%s)", address, exc)
        finally:
            client.close()
    if not servers:
        raise redis.ConnectionError("no node of the cluster answered")
    unfit = [s for s in servers if s.missing]
    products = _and(sorted({s.product for s in (unfit or servers)}))
    if len(unfit) == len(servers):
        subject = f"Redis at {shown} is a cluster of {products}, which lacks"
        raise UnfitRedis(_refusal(subject, unfit, CLUSTER_MINIMUM))
    if unfit:
        names = _and([s.name for s in unfit])
        lack = "lacks" if len(unfit) == 1 else "lack"
        subject = f"Redis at {shown} is a cluster where {names} ({products}) {lack}"
        raise UnfitRedis(_refusal(subject, unfit, CLUSTER_MINIMUM))
    return f"a cluster of {len(servers)} nodes of {products}"


def _blocking(url: str) -> Any:
    return connect.blocking_client(url, socket_connect_timeout=2, socket_timeout=2)


def _server(client: redis.Redis, name: str, needed: tuple[str, ...]) -> Server:
    pipe = client.pipeline(transaction=False)
    pipe.info("server")
    # As one command name: redis-py's parser of COMMAND replies has no room for nil.
    pipe.execute_command("COMMAND INFO", *needed)  # type: ignore[no-untyped-call]
    info, known = pipe.execute(raise_on_error=False)
    if isinstance(info, Exception):
        raise info
    product, version = _product(info)
    if isinstance(known, ResponseError):
        # COMMAND itself refused (renamed away, or not allowed to this user):
        # which commands there are cannot be told; the workers will find out.
        log.warning("cannot list the commands of %s (%s): not checked", name or product, known)
        return Server(name, product, version, ())
    if isinstance(known, Exception):
        raise known
    missing = tuple(command for command, found in zip(needed, known, strict=True) if not found)
    return Server(name, product, version, missing)


def _product(info: dict[str, Any]) -> tuple[str, tuple[int, ...] | None]:
    """The server's name and version (Valkey says its own), and the Redis version it matches."""
    redis_version = str(info.get("redis_version", "?"))
    found = re.match(r"(\d+)\.(\d+)", redis_version)
    version = (int(found.group(1)), int(found.group(2))) if found else None
    name = str(info.get("server_name") or "redis")
    own = str(info.get(f"{name}_version") or redis_version)
    return f"{'Redis' if name == 'redis' else name.capitalize()} {own}", version


def _check_stream_ranges(client: Any, shown: str, product: str) -> None:
    try:
        client.xrange(PROBE_KEY, min="(0-0", max="+", count=1)
    except ResponseError as exc:
        if "invalid stream id" not in str(exc).lower():
            raise UnfitRedis(f"Redis at {shown} refused XRANGE: {exc}") from None
        raise UnfitRedis(
            f"Redis at {shown} is {product}, which cannot read a stream from an exclusive "
            f"start (XRANGE key (id +): chat-server needs Redis {_dotted(MINIMUM)} or newer"
        ) from None


def _refusal(subject: str, unfit: list[Server], minimum: tuple[int, int]) -> str:
    """``subject`` and what the ``unfit`` servers lack, and which Redis has it."""
    missing = {command for server in unfit for command in server.missing}
    ordered = [c for c in (*COMMANDS, *PUBSUB, *SHARDED_PUBSUB) if c in missing]
    plain = [c for c in ordered if c not in SHARDED_PUBSUB]
    sharded = [c for c in ordered if c in SHARDED_PUBSUB]
    lacks = _and([*plain, *([f"{_and(sharded)} (sharded pub/sub)"] if sharded else [])])
    needer = "a cluster" if sharded else "chat-server"
    if all(s.version is not None and s.version >= minimum for s in unfit):
        # New enough: its configuration renamed them away.
        return f"{subject} {lacks}: {needer} needs them (renamed away in its configuration?)"
    return f"{subject} {lacks}: {needer} needs Redis {_dotted(minimum)} or newer"


def _and(words: list[str]) -> str:
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in version)
