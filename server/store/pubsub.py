"""Pub/sub connections: one per Redis node that serves a watched room.

One Redis (or the primary Sentinel names) gets one connection. A Redis
Cluster gets one per primary that serves a watched room, subscribed to its
rooms' shard channels (``SSUBSCRIBE``). Each connection reads forever and
reconnects with capped, jittered backoff; what it reads goes to its
:class:`Listener` (the relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..common import redisurl
from ..common.metrics import Metrics
from . import connect
from .failures import FAILURES
from .keys import channel

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 500  # channels per SUBSCRIBE after a reconnect


class OneNode:
    """One Redis (or the primary Sentinel names): one connection for every room."""

    sharded = False
    commands = ("SUBSCRIBE", "UNSUBSCRIBE")
    default: str | None = ""
    ready = True

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def start(self) -> None:
        pass

    def node_of(self, channel_name: str) -> str:
        return ""

    def connection(self, node: str) -> AbstractConnection:
        connection: AbstractConnection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def refresh(self) -> None:
        pass

    async def close(self) -> None:
        await self._client.aclose()


class ClusterNodes:
    """A Redis Cluster: a connection per primary, shard channels."""

    sharded = True
    commands = ("SSUBSCRIBE", "SUNSUBSCRIBE")
    default: str | None = None

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self.ready = False

    async def start(self) -> None:
        failures = 0
        while True:
            try:
                await self._client.initialize()
                break
            except FAILURES as exc:
                failures += 1
                if failures == 1:
                    log.warning("cannot read the cluster's slots (%s); retrying", exc)
                await asyncio.sleep(retry_after(failures))
        self.ready = True

    def node_of(self, channel_name: str) -> str:
        slot = self._client.keyslot(channel_name)
        return str(self._client.nodes_manager.get_node_from_slot(slot).name)

    def connection(self, node: str) -> AbstractConnection:
        found = self._client.get_node(node_name=node)
        if found is None:
            raise RedisConnectionError(f"{node} is no longer a node of the cluster")
        return found.connection_class(**found.connection_kwargs)

    async def refresh(self) -> None:
        await self._client.nodes_manager.initialize()

    async def close(self) -> None:
        await self._client.aclose()


def nodes_for(redis_url: str) -> OneNode | ClusterNodes:
    # Pub/sub replies as plain RESP2 arrays, and no read timeout: a quiet
    # channel is not a dead connection (TCP keepalive finds those).
    options: dict[str, Any] = {
        "protocol": 2,
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
    if redisurl.kind_of(redis_url) == "cluster":
        return ClusterNodes(connect.async_client(redis_url, **options))
    if not redis_url.startswith("unix:"):
        options["socket_keepalive"] = True  # a unix socket refuses the option
    return OneNode(connect.async_client(redis_url, **options))


def retry_after(failures: int) -> float:
    """Capped, jittered backoff: how long to wait after ``failures`` failures in a row."""
    return min(5.0, 0.05 * 2.0**failures) * random.uniform(0.5, 1.0)


class Listener(Protocol):
    """What a :class:`Link` reports to (the relay)."""

    nodes: OneNode | ClusterNodes
    metrics: Metrics
    # A connection lost is back: Redis may have restarted, or failed over.
    on_reconnected: Callable[[], None]

    def handle(self, link: Link, reply: Any) -> None:
        """A pub/sub reply arrived on ``link``."""

    def link_failed(self) -> None:
        """A connection broke or was told its slots moved."""

    def resubscribing(self, rooms: list[str]) -> None:
        """A connection subscribes to ``rooms`` afresh."""


class Link:
    """One pub/sub connection, to one node, subscribed to the rooms it serves.

    It reads forever, reconnecting with capped, jittered backoff; each new
    connection subscribes to all of its rooms again (their feeds then catch
    up from the streams). Subscribing and unsubscribing single rooms is
    queued and sent by a task of its own, so that ``watch`` never waits.
    """

    def __init__(self, relay: Listener, node: str) -> None:
        self.relay = relay
        self.node = node
        self.rooms: dict[str, None] = {}  # an ordered set
        self._conn: AbstractConnection | None = None
        self._outbox: list[tuple[str, str]] = []
        self._outbox_ready = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._closing = False
        subscribe, unsubscribe = relay.nodes.commands
        self._subscribe, self._unsubscribe = subscribe, unsubscribe
        self._task = asyncio.create_task(self._run(), name=f"relay-link {node}".strip())

    def add(self, room: str) -> None:
        self.rooms[room] = None
        self._queue(self._subscribe, channel(room))

    def remove(self, room: str, *, unsubscribe: bool = True) -> None:
        if room in self.rooms:
            del self.rooms[room]
            if unsubscribe:
                self._queue(self._unsubscribe, channel(room))

    def _queue(self, command: str, channel_name: str) -> None:
        self._outbox.append((command, channel_name))
        self._outbox_ready.set()

    async def close(self) -> None:
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self._task.cancel()
        await asyncio.wait([self._task], timeout=2)

    async def _run(self) -> None:
        sender = asyncio.create_task(self._send_queued(), name="relay-sender")
        try:
            await self._read_forever()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _read_forever(self) -> None:
        failures = 0
        while not self._closing:
            conn: AbstractConnection | None = None
            try:
                conn = self.relay.nodes.connection(self.node)
                await conn.connect()  # type: ignore[no-untyped-call]
                await self._subscribe_all(conn)
                if failures:
                    log.info("pub/sub reconnected to Redis")
                    self.relay.metrics.redis_reconnected()
                    self.relay.on_reconnected()
                    failures = 0
                while True:
                    reply = await conn.read_response(
                        timeout=math.inf, disconnect_on_error=False, push_request=True
                    )
                    self.relay.handle(self, reply)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not only Redis errors: whatever happens, this loop must not
                # die and leave the worker deaf.
                if self._closing:
                    break
                self.relay.metrics.redis_error()
                failures += 1
                if failures == 1:
                    if isinstance(exc, (RedisError, OSError)):
                        log.warning("pub/sub lost Redis (%s); reconnecting", exc)
                    else:
                        log.exception("pub/sub reader failed; reconnecting")
                self.relay.link_failed()
                await asyncio.sleep(retry_after(failures))
            finally:
                self._conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()

    async def _subscribe_all(self, conn: AbstractConnection) -> None:
        """Subscribe a fresh connection to every room of this node; each then catches up."""
        async with self._send_lock:
            # Whatever was queued is superseded by this snapshot of the rooms.
            self._outbox.clear()
            rooms = list(self.rooms)
            self.relay.resubscribing(rooms)
            # A shard channel per command (one command may only name one
            # slot), else batches of channels; all in one write.
            per_command = 1 if self.relay.nodes.sharded else SUBSCRIBE_BATCH
            await _send(
                conn,
                [
                    (self._subscribe, *[channel(r) for r in rooms[start : start + per_command]])
                    for start in range(0, len(rooms), per_command)
                ],
            )
            self._conn = conn

    async def _send_queued(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            async with self._send_lock:
                conn = self._conn
                if conn is None:
                    continue  # the next connection subscribes to every room anyway
                commands, self._outbox = self._outbox, []
                try:
                    await _send(conn, commands)
                except Exception as exc:  # noqa: BLE001  this loop must not die
                    # The connection broke (redis-py may raise AttributeError
                    # on one closed under it): the reader reconnects and
                    # subscribes to every room again.
                    log.debug("pub/sub command not sent: %r", exc)


async def _send(conn: AbstractConnection, commands: Sequence[tuple[str, ...]]) -> None:
    """Send pub/sub commands (no replies are awaited: they arrive as pushes) in one write."""
    if commands:
        packed = [chunk for command in commands for chunk in conn.pack_command(*command)]
        await conn.send_packed_command(packed)
