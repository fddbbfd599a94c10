"""The per-worker room registry: who listens where, and bounded per-connection buffers.

The hub does not know Redis exists. It asks a :class:`Backend` for a room's
newest id and for the messages after an id, and is fed new messages by the
worker's single stream reader through :meth:`Hub.dispatch`.

Delivery without gap or duplicate works like this: a subscription is added
to its room *before* its replay is read, so every message is either in the
replay (read afterwards, so it reaches at least as far as the room's cursor)
or dispatched live into the subscription's buffer. Messages are emitted in
id order and anything at or below the last emitted id is skipped, so the
overlap between the two is never sent twice.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from .metrics import Metrics
from .model import Message, StreamKey, format_id, parse_id

log = logging.getLogger(__name__)

REPLAY_PAGE = 500


class Backend(Protocol):
    async def last_id(self, room: str) -> str:
        """The newest id in the room's history, or ``0-0`` when there is none."""

    async def read_after(self, room: str, after: str, count: int) -> list[Message]:
        """Up to ``count`` messages with ids strictly greater than ``after``, oldest first."""


class Overflow(Exception):
    """A subscriber did not keep up and its buffer overflowed."""


class Closing(Exception):
    """The worker is stopping and takes no new subscribers."""


class Presence:
    """A snapshot of a room's online users, encoded once for all local subscribers."""

    __slots__ = ("online", "sse_frame", "ws_frame")

    def __init__(self, online: list[dict[str, str]]) -> None:
        self.online = online
        data = json.dumps({"online": online}, ensure_ascii=False, separators=(",", ":"))
        self.sse_frame = f"event: presence\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"presence",' + data[1:]).encode()


class Ping:
    """Marker: the heartbeat asks the connection to prove it is alive."""


PING = Ping()
Event = list[Message] | Presence | Ping


class Subscription:
    """One streaming connection's view of a room: a bounded outbox of events."""

    _ids = itertools.count(1)

    def __init__(self, room: Room, user_id: str, name: str, since: StreamKey | None, limit: int):
        self.id = next(self._ids)
        self.room = room
        self.user_id = user_id
        self.name = name
        self.since = since
        self.limit = limit
        self.buffer: collections.deque[Message] = collections.deque()
        self.last_key: StreamKey = since or room.cursor
        self.presence: Presence | None = room.presence
        self.ping_due = False
        self.overflowed = False
        self.closed = False
        self.close_reason = ""
        # When the consumer last finished a write: the heartbeat closes
        # connections that make no progress (a peer that stopped reading).
        self.last_progress = time.monotonic()
        # When the client last sent anything (WebSocket only; None for SSE).
        self.last_seen: float | None = None
        # Set by the transport: drops the connection without flushing.
        self.abort: Callable[[], None] = self.close
        self._wakeup = asyncio.Event()

    def push(self, messages: Iterable[Message]) -> None:
        if self.closed or self.overflowed:
            return
        self.buffer.extend(messages)
        if len(self.buffer) > self.limit:
            # Cut off rather than grow: the client resumes by id later. The
            # transport is aborted at once, since its writer may be stuck on
            # a client that stopped reading.
            log.info(
                "cutting off a subscriber of %s that fell %d messages behind",
                self.room.name,
                len(self.buffer),
            )
            self.overflowed = True
            self.buffer.clear()
            self.room.metrics.dropped += 1
            self.abort()
        self._wakeup.set()

    def set_presence(self, presence: Presence) -> None:
        self.presence = presence
        self._wakeup.set()

    def ping(self) -> None:
        self.ping_due = True
        self._wakeup.set()

    def close(self, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self._wakeup.set()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def _fresh(self, messages: Iterable[Message]) -> list[Message]:
        fresh = []
        for message in messages:
            if message.key > self.last_key:
                fresh.append(message)
                self.last_key = message.key
        return fresh

    async def events(self, backend: Backend) -> AsyncIterator[Event]:
        """Yield the replay after ``since``, then live messages, presence and pings.

        Messages come in id order, each once. Ends when the subscription is
        closed; raises :class:`Overflow` when the consumer fell further behind
        than its buffer allows.
        """
        if self.since is not None:
            after = format_id(self.since)
            while not self.closed:
                page = await backend.read_after(self.room.name, after, REPLAY_PAGE)
                if page:
                    after = page[-1].id
                    fresh = self._fresh(page)
                    if fresh:
                        yield fresh
                if len(page) < REPLAY_PAGE:
                    break
        while True:
            if self.overflowed:
                raise Overflow
            if self.closed:
                return
            if self.presence is not None:
                presence, self.presence = self.presence, None
                yield presence
            elif self.ping_due:
                self.ping_due = False
                yield PING
            elif self.buffer:
                pending = list(self.buffer)
                self.buffer.clear()
                fresh = self._fresh(pending)
                if fresh:
                    yield fresh
            else:
                self._wakeup.clear()
                await self._wakeup.wait()


class Room:
    def __init__(self, name: str, cursor: StreamKey, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        # The id up to which this worker has dispatched the room's messages.
        self.cursor = cursor
        self.subscriptions: dict[int, Subscription] = {}
        self.presence: Presence | None = None


class Hub:
    """Rooms with local subscribers, and the stream cursor of each."""

    def __init__(self, backend: Backend, *, buffer_limit: int, metrics: Metrics) -> None:
        self.backend = backend
        self.metrics = metrics
        self.buffer_limit = buffer_limit
        self.rooms: dict[str, Room] = {}
        self._joining: dict[str, asyncio.Task[Room]] = {}
        self.closing = False
        self.changed = asyncio.Event()  # set when a room is added
        # Why streams will be closed when the worker stops (see streams.py).
        self.stop_reason = "shutdown"

    def cursors(self) -> dict[str, StreamKey]:
        return {name: room.cursor for name, room in self.rooms.items()}

    async def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is not None:
            return room
        joining = self._joining.get(name)
        if joining is None:
            # A task of its own, so that one client hanging up while the
            # cursor is read does not cancel the other joiners' requests.
            joining = asyncio.create_task(self._create_room(name))
            self._joining[name] = joining
            joining.add_done_callback(lambda _: self._joining.pop(name, None))
        return await asyncio.shield(joining)

    async def _create_room(self, name: str) -> Room:
        last = await self.backend.last_id(name)
        room = Room(name, parse_id(last) or (0, 0), self.metrics)
        self.rooms[name] = room
        self.changed.set()
        return room

    async def subscribe(
        self, room_name: str, user_id: str, name: str, since: StreamKey | None
    ) -> Subscription:
        if self.closing:
            raise Closing
        room = await self._room(room_name)
        # A room dropped while we awaited its cursor is created again.
        while self.rooms.get(room_name) is not room:
            room = await self._room(room_name)
        if self.closing:
            raise Closing
        subscription = Subscription(room, user_id, name, since, self.buffer_limit)
        room.subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        room = subscription.room
        room.subscriptions.pop(subscription.id, None)
        if not room.subscriptions and self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    def dispatch(self, room_name: str, messages: list[Message]) -> None:
        """Hand newly read messages of a room to every local subscriber."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        fresh = [m for m in messages if m.key > room.cursor]
        if not fresh:
            return
        room.cursor = fresh[-1].key
        for subscription in list(room.subscriptions.values()):
            subscription.push(fresh)

    def subscriptions(self) -> Iterable[Subscription]:
        for room in list(self.rooms.values()):
            yield from list(room.subscriptions.values())

    def set_presence(self, room_name: str, online: list[dict[str, str]]) -> None:
        """Send a room's online users to its local subscribers if they changed."""
        room = self.rooms.get(room_name)
        if room is None or (room.presence is not None and room.presence.online == online):
            return
        room.presence = Presence(online)
        for subscription in list(room.subscriptions.values()):
            subscription.set_presence(room.presence)

    def close_all(self, reason: str) -> None:
        self.closing = True
        for subscription in self.subscriptions():
            subscription.close(reason)
