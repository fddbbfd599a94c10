"""The Redis backend: streams as history, pub/sub for live delivery.

Each room is a capped Redis Stream, the source of truth for history and
resume. Publishing runs one script that appends the message to the stream
and publishes it, with its id and the id of the message before it, on the
room's channel. Both keys carry the room as a hash tag (``{room}``). The
stream expires ``room_ttl_s`` after its newest message: a room nobody writes
to leaves nothing behind (its presence keys go with its last connection).

Each entry also keeps the id of the entry before it (field ``p``). Trimming
removes the oldest entries, so the first entry after a client's id tells,
at no extra cost, whether anything between the two is gone: its ``p`` is
newer than the client's id exactly when messages the client never got were
trimmed away (or the room's history started again after that id). Nothing
extra is written or read per message. Entries stored before ``p`` existed
get their predecessor from the stream, or from Redis 7's
``max-deleted-entry-id`` for the oldest one (unknown on older Redis).

Each worker holds one pub/sub connection (:class:`Relay`) subscribed to
exactly the channels of the rooms its clients are in, added and removed as
rooms gain their first or lose their last local client. A message costs a
worker one pub/sub frame, whatever the number of rooms it listens to.

Pub/sub loses what is published while a worker is not subscribed, so the
stream fills every hole: after each SUBSCRIBE is confirmed (on watching a
room, and again after every reconnect), and whenever a message arrives
whose previous id is not the last one the worker passed on, the worker
reads the stream from its cursor and holds live messages back until it
has caught up. Messages reach the hub in id order, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from . import redisurl, scripts
from .config import Config
from .metrics import Metrics
from .model import LAST_KEY, Message, StreamKey, format_id, parse_id

log = logging.getLogger(__name__)

FILL_PAGE = 500  # messages read per catch-up read
PENDING_MAX = 1000  # live messages held per room while it catches up
SUBSCRIBE_BATCH = 500  # channels per SUBSCRIBE after a reconnect

# Append to the stream and publish "m", the previous id, the new id and the
# message body, in one step: no other message of the room can come between.
# Each message also pushes the room's expiry back to ARGV[8] seconds from now.
# (XADD is the first write: when Redis is out of memory the script fails
# there, having changed nothing.)
#
# With an idempotency record (KEYS[2]): when it exists, the message was
# published already, and what was published is returned instead, alone in
# the reply; else the record keeps what is published, for ARGV[9] seconds.
# It keeps the whole message rather than its id, so that a retry gets the
# same answer even after the message was trimmed from the history.
#
# With ARGV[10] == '0', a message that would create the room (its stream
# does not exist) is not stored: 'new' is returned.
_PUBLISH_SCRIPT = """
if KEYS[2] then
  local published = redis.call('GET', KEYS[2])
  if published then return {published} end
end
if ARGV[10] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 'new'
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'u', ARGV[2], 'n', ARGV[3], 't', ARGV[4], 'ts', ARGV[5], 'p', prev)
redis.call('EXPIRE', KEYS[1], ARGV[8])
local published = 'm\\n' .. prev .. '\\n' .. id .. '\\n' .. ARGV[7]
redis.call('PUBLISH', ARGV[6], published)
if KEYS[2] then
  redis.call('SET', KEYS[2], published, 'EX', ARGV[9])
end
return {id, prev}
"""

# The predecessor of an entry stored without "p": the entry before it, or,
# for the stream's oldest, the newest one trimmed away (Redis 7 keeps it;
# '0-0' when nothing was). Nil when Redis cannot tell.
_PREDECESSOR_SCRIPT = """
local before = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if before[1] then return before[1][1] end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return false end
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then return info[i + 1] end
end
return false
"""


def stream_key(room: str) -> str:
    # The braces are a Redis Cluster hash tag: all of a room's keys share a slot.
    return f"chat:{{{room}}}:messages"


def idempotency_key(room: str, user_id: str, key: str) -> str:
    # In the room's slot, so that the publish script may touch it.
    return f"chat:{{{room}}}:idem:{user_id}:{key}"


def channel(room: str) -> str:
    return f"chat:{{{room}}}:live"


def room_of(channel_name: str) -> str | None:
    start, end = channel_name.find("{"), channel_name.rfind("}")
    return channel_name[start + 1 : end] if 0 <= start < end else None


IDEMPOTENCY_TTL_S = 600  # how long a retry with the same key gets the first message


class NewRoom(Exception):
    """The message would create its room, and was not allowed to."""


class Broker:
    """Stores and reads messages."""

    def __init__(
        self, redis: aioredis.Redis, *, history_len: int, room_ttl_s: int = Config.room_ttl_s
    ) -> None:
        self.redis = redis
        self.history_len = history_len
        self.room_ttl_s = room_ttl_s
        self._publish = scripts.register(redis, _PUBLISH_SCRIPT)
        self._predecessor = redis.register_script(_PREDECESSOR_SCRIPT)

    async def publish(self, room: str, user_id: str, name: str, text: str) -> Message:
        message, _ = await self.publish_once(room, user_id, name, text, None)
        return message

    async def publish_once(
        self,
        room: str,
        user_id: str,
        name: str,
        text: str,
        key: str | None,
        *,
        may_create: bool = True,
    ) -> tuple[Message, bool]:
        """Store and publish a message; True with it when it was stored now.

        Unless ``may_create``, a message that would create the room raises
        :class:`NewRoom` and nothing is stored.

        With an idempotency ``key``: if ``user_id`` published a message with
        the same key in this room within ``IDEMPOTENCY_TTL_S`` (or
        ``room_ttl_s``, if shorter), that message is returned with False, and
        nothing is stored or published. Atomic, in one round trip.
        """
        ts = time.time()
        body = json.dumps([user_id, name, text, ts], ensure_ascii=False, separators=(",", ":"))
        keys = [stream_key(room)]
        if key is not None:
            keys.append(idempotency_key(room, user_id, key))
        reply = await self._publish(
            keys=keys,
            args=[
                self.history_len,
                user_id,
                name,
                text,
                repr(ts),
                channel(room),
                body,
                self.room_ttl_s,
                min(IDEMPOTENCY_TTL_S, self.room_ttl_s),
                "1" if may_create else "0",
            ],
        )
        if reply == "new":
            raise NewRoom(room)
        if len(reply) == 1:
            return self._published(room, str(reply[0])), False
        message_id, prev = reply
        return Message(str(message_id), room, user_id, name, text, ts, parse_id(str(prev))), True

    async def published_with(self, room: str, user_id: str, key: str) -> Message | None:
        """The message ``user_id`` published with idempotency ``key``, if it is remembered."""
        published = await self.redis.get(idempotency_key(room, user_id, key))
        return None if published is None else self._published(room, str(published))

    @staticmethod
    def _published(room: str, published: str) -> Message:
        parsed = parse_live(room, published)
        if parsed is None:
            raise ValueError(f"malformed idempotency record in {room}")
        return parsed[1]

    async def history(self, room: str, limit: int, before: StreamKey | None) -> list[Message]:
        """The newest ``limit`` messages older than ``before``, oldest first."""
        if before == (0, 0):
            return []  # nothing is older (and Redis refuses the range)
        newest = "(" + format_id(before) if before else "+"
        entries = await self.redis.xrevrange(stream_key(room), max=newest, min="-", count=limit)
        return [Message.from_fields(room, id, fields) for id, fields in reversed(entries or [])]

    async def read_after(self, room: str, after: StreamKey, count: int) -> list[Message]:
        """Up to ``count`` messages after ``after``, oldest first, each with its ``prev``."""
        if after == LAST_KEY:
            return []  # nothing can follow (and Redis refuses the range)
        key = stream_key(room)
        entries = await self.redis.xrange(key, min="(" + format_id(after), max="+", count=count)
        messages = [Message.from_fields(room, id, fields) for id, fields in entries or []]
        for index, message in enumerate(messages):
            if message.prev is not None:
                continue
            # Stored before entries kept their predecessor. Within one read the
            # entries are consecutive (the stream only loses its oldest), so
            # only the first of the page needs asking.
            if index:
                message.prev = messages[index - 1].key
            else:
                found = await self._predecessor(keys=[key], args=[message.id])
                message.prev = parse_id(str(found)) if found else None
        return messages

    async def last_id(self, room: str) -> StreamKey:
        entries = await self.redis.xrevrange(stream_key(room), count=1)
        return (parse_id(str(entries[0][0])) or (0, 0)) if entries else (0, 0)


def parse_live(room: str, data: str) -> tuple[StreamKey, Message] | None:
    """A message as published by the publish script: (previous id, message)."""
    try:
        _, prev, message_id, body = data.split("\n", 3)
        user_id, name, text, ts = json.loads(body)
        prev_key = parse_id(prev)
        if prev_key is None:
            return None
        message = Message(message_id, room, user_id, name, text, float(ts), prev_key)
    except (ValueError, TypeError):
        return None
    return prev_key, message


class _Feed:
    """One watched room: where its delivery stands."""

    __slots__ = ("cursor", "pending")

    def __init__(self, cursor: StreamKey) -> None:
        self.cursor = cursor
        # None: live. A list: catching up from the stream, holding live
        # messages (with their previous ids) back until it has.
        self.pending: list[tuple[StreamKey, Message]] | None = []


class Relay:
    """The worker's pub/sub connections: the live half of the hub's backend.

    With the reads of :class:`Broker` it is the hub's
    :class:`~server.hub.Backend`. New messages go to the callback given to
    :meth:`deliver_to` in id order, presence notices to the other one.

    One Redis (or the primary Sentinel names) gets one connection. A Redis
    Cluster gets one per primary that serves a watched room, subscribed to
    its rooms' shard channels (``SSUBSCRIBE``). When a primary fails or a
    slot moves, the relay reads the cluster's slots again and moves the
    rooms concerned to the connection of their new primary; their feeds
    catch up from the streams as after any reconnect.
    """

    def __init__(self, redis_url: str, broker: Broker, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_messages: Callable[[str, list[Message]], None] = lambda room, messages: None
        self.on_presence: Callable[[str], None] = lambda room: None
        self.nodes = _nodes(redis_url)
        self._feeds: dict[str, _Feed] = {}
        self._links: dict[str, _Link] = {}  # by node
        self._room_links: dict[str, _Link] = {}
        self._to_fill: dict[str, None] = {}  # an ordered set
        self._fill_ready = asyncio.Event()
        self._remapping: asyncio.Task[None] | None = None
        self._stopping = False

    def deliver_to(
        self,
        on_messages: Callable[[str, list[Message]], None],
        on_presence: Callable[[str], None],
    ) -> None:
        self.on_messages = on_messages
        self.on_presence = on_presence

    # ------------------------------------------------------------- the contract

    async def last_id(self, room: str) -> StreamKey:
        return await self.broker.last_id(room)

    async def read_after(self, room: str, after: StreamKey, count: int) -> list[Message]:
        return await self.broker.read_after(room, after, count)

    def watch(self, room: str, after: StreamKey) -> None:
        self._feeds[room] = _Feed(after)
        self._place(room)

    def unwatch(self, room: str) -> None:
        if self._feeds.pop(room, None) is not None:
            link = self._room_links.pop(room, None)
            if link is not None:
                link.remove(room)

    # ------------------------------------------------------------- the tasks

    async def run(self) -> None:
        """Relay forever: every connection reconnects with capped, jittered backoff."""
        await self.nodes.start()
        if self.nodes.default is not None:
            self._link(self.nodes.default)
        for room in self._feeds:
            if room not in self._room_links:
                self._place(room)
        try:
            await self._fill_queued()
        finally:
            self._stopping = True
            if self._remapping is not None:
                self._remapping.cancel()
            for link in list(self._links.values()):
                await link.close()
            await self.nodes.close()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End :meth:`run` (running as ``task``), closing every connection."""
        self._stopping = True
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=3)
        if done and not task.cancelled() and task.exception() is not None:
            log.warning("pub/sub relay ended with %r", task.exception())

    def _link(self, node: str) -> _Link:
        link = self._links.get(node)
        if link is None:
            self._links[node] = link = _Link(self, node)
        return link

    def _place(self, room: str) -> None:
        """Subscribe ``room`` on the connection of the node that serves it
        (once the nodes are known: :meth:`run` places what came before)."""
        if not self.nodes.ready:
            return
        link = self._link(self.nodes.node_of(channel(room)))
        self._room_links[room] = link
        link.add(room)

    def link_failed(self) -> None:
        """A connection broke or was told its slots moved: read the slots again, soon."""
        if self.nodes.sharded and not self._stopping and self._remapping is None:
            self._remapping = asyncio.create_task(self._remap(), name="relay-remap")

    async def _remap(self) -> None:
        try:
            try:
                await self.nodes.refresh()
            except redisurl.FAILURES as exc:
                log.debug("cannot read the cluster's slots: %r", exc)
                return  # the failing connection asks again after its backoff
            for room, link in list(self._room_links.items()):
                if self.nodes.node_of(channel(room)) != link.node:
                    link.remove(room, unsubscribe=False)
                    feed = self._feeds.get(room)
                    if feed is not None and feed.pending is None:
                        feed.pending = []  # until the new subscription catches up
                    self._place(room)
            for node, link in list(self._links.items()):
                if not link.rooms:
                    del self._links[node]
                    await link.close()
        finally:
            self._remapping = None

    # ------------------------------------------------------------- what arrives

    def handle(self, link: _Link, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, channel_name, data = reply[0], reply[1], reply[2]
        room = room_of(str(channel_name))
        if room is None:
            return
        feed = self._feeds.get(room)
        if feed is None:
            return
        if kind in ("message", "smessage"):
            if data == "p":
                self.on_presence(room)
            elif data.startswith("m\n"):
                parsed = parse_live(room, data)
                if parsed is None:
                    log.warning("ignoring a malformed message on %s", channel_name)
                else:
                    self._arrived(room, feed, *parsed)
        elif kind in ("subscribe", "ssubscribe"):
            # Now nothing published to the room can be missed: read the
            # stream from the cursor to cover what came before, and presence
            # (notices published while not subscribed are lost too).
            self._schedule_fill(room, feed)
            self.on_presence(room)
        elif kind == "sunsubscribe" and room in link.rooms:
            # Not asked for: Redis Cluster moved the room's slot elsewhere.
            feed.pending = feed.pending or []
            self.link_failed()

    def _arrived(self, room: str, feed: _Feed, prev: StreamKey, message: Message) -> None:
        if feed.pending is not None:
            if len(feed.pending) >= PENDING_MAX:
                # The catch-up read will find these in the stream.
                feed.pending.clear()
            feed.pending.append((prev, message))
        elif prev == feed.cursor:
            feed.cursor = message.key
            self.on_messages(room, [message])
        elif message.key > feed.cursor:
            # Something between the cursor and this message went missing.
            feed.pending = [(prev, message)]
            self._schedule_fill(room, feed)

    def resubscribing(self, rooms: list[str]) -> None:
        """A connection subscribes to ``rooms`` afresh: hold their live messages."""
        for room in rooms:
            feed = self._feeds.get(room)
            if feed is not None and feed.pending is None:
                feed.pending = []

    def _schedule_fill(self, room: str, feed: _Feed) -> None:
        """Catch the room up from its stream soon, holding live messages back until then."""
        if feed.pending is None:
            feed.pending = []
        self._to_fill[room] = None
        self._fill_ready.set()

    async def _fill_queued(self) -> None:
        failures = 0
        while True:
            await self._fill_ready.wait()
            self._fill_ready.clear()
            while self._to_fill:
                room = next(iter(self._to_fill))
                del self._to_fill[room]
                feed = self._feeds.get(room)
                if feed is None:
                    continue
                try:
                    await self._fill(room, feed)
                    failures = 0
                except redisurl.FAILURES as exc:
                    self.metrics.redis_error()
                    failures += 1
                    if failures == 1:
                        log.warning("cannot catch up %s from its stream: %s", room, exc)
                    self._schedule_fill(room, feed)
                    await asyncio.sleep(_backoff(failures))

    async def _fill(self, room: str, feed: _Feed) -> None:
        """Read the stream after the cursor, then release the held live messages."""
        while True:
            page = await self.broker.read_after(room, feed.cursor, FILL_PAGE)
            if self._feeds.get(room) is not feed:
                return  # unwatched meanwhile
            fresh = [m for m in page if m.key > feed.cursor]
            if fresh:
                feed.cursor = fresh[-1].key
                self.on_messages(room, fresh)
            if len(page) < FILL_PAGE:
                break
        held, feed.pending = feed.pending or [], None
        for index, (prev, message) in enumerate(held):
            if message.key <= feed.cursor:
                continue
            if prev != feed.cursor:
                # Published after our read but not next to it: read again.
                feed.pending = held[index:]
                self._schedule_fill(room, feed)
                return
            feed.cursor = message.key
            self.on_messages(room, [message])


class _OneNode:
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


class _ClusterNodes:
    """A Redis Cluster: a connection per primary, shard channels."""

    sharded = True
    commands = ("SSUBSCRIBE", "SUNSUBSCRIBE")
    default: str | None = None

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self.ready = False

    async def start(self) -> None:
        while True:
            try:
                await self._client.initialize()
                break
            except redisurl.FAILURES as exc:
                log.warning("cannot read the cluster's slots (%s); retrying", exc)
                await asyncio.sleep(1)
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


def _nodes(redis_url: str) -> _OneNode | _ClusterNodes:
    # Pub/sub replies as plain RESP2 arrays, and no read timeout: a quiet
    # channel is not a dead connection (TCP keepalive finds those).
    options: dict[str, Any] = {
        "protocol": 2,
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
    kind = redisurl.kind_of(redis_url)
    if kind == "cluster":
        return _ClusterNodes(redisurl.async_client(redis_url, **options))
    if kind != "single" or redis_url.startswith(("redis://", "rediss://")):
        options["socket_keepalive"] = True  # a unix socket refuses the option
    return _OneNode(redisurl.async_client(redis_url, **options))


def _backoff(failures: int) -> float:
    return min(5.0, 0.05 * 2.0**failures) * random.uniform(0.5, 1.0)


class _Link:
    """One pub/sub connection, to one node, subscribed to the rooms it serves.

    It reads forever, reconnecting with capped, jittered backoff; each new
    connection subscribes to all of its rooms again (their feeds then catch
    up from the streams). Subscribing and unsubscribing single rooms is
    queued and sent by a task of its own, so that ``watch`` never waits.
    """

    def __init__(self, relay: Relay, node: str) -> None:
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
                await asyncio.sleep(_backoff(failures))
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
            if self.relay.nodes.sharded:
                # A shard channel per command: one command may only name one slot.
                for room in rooms:
                    await conn.send_command(self._subscribe, channel(room))
            else:
                for start in range(0, len(rooms), SUBSCRIBE_BATCH):
                    batch = rooms[start : start + SUBSCRIBE_BATCH]
                    await conn.send_command(self._subscribe, *[channel(r) for r in batch])
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
                    for command, channel_name in commands:
                        await conn.send_command(command, channel_name)
                except Exception as exc:  # noqa: BLE001  this loop must not die
                    # The connection broke (redis-py may raise AttributeError
                    # on one closed under it): the reader reconnects and
                    # subscribes to every room again.
                    log.debug("pub/sub command not sent: %r", exc)
