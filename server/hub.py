"""The per-worker room registry: who listens where, and how each connection is written.

The hub knows nothing of Redis. It talks to a :class:`Backend` through a
small contract: "watch room R from id X", "unwatch R", and two reads (the
newest id, and the messages after an id). The backend hands new messages
back, in id order and without gaps, through :meth:`Hub.dispatch`, and says
when a room's presence changed through the callback the app gives it.

Fan-out writes the bytes each message was encoded to once straight to every
connection of the room (:meth:`Sink.send`), with no task woken per
connection. Only a connection that cannot take a write right now (its
client reads slowly, or it is still replaying history) gets a queue, and a
pump task that drains it as the connection drains; when the queue is empty
the connection goes back to direct writes. A queue that outgrows
``buffer_limit`` events, or a connection that does not drain within
``idle_timeout_s``, is cut off: the client resumes by id.

No gap and no duplicate: a subscription is added to its room before its
replay is read, so every message is either in the replay (read afterwards,
so it reaches at least as far as the room's cursor) or dispatched live into
the subscription's queue. Each subscription remembers the last id it wrote
and skips anything at or below it.

Honest resume: every message carries ``prev``, the id stored just before it.
A message whose ``prev`` is newer than what a connection last got follows
messages that connection will never get (trimmed from the capped history,
or never read by this worker before they were): the connection is sent a
:class:`~server.model.Gap` naming that message first. A replay is stricter,
since the server knows nothing of what the client saw before its resume id:
a message that began the room's history again (its ``prev`` is ``(0, 0)``:
the room expired, or Redis lost it) or whose predecessor is unknown is
announced as a gap too. Resuming from ``(0, 0)`` asks for the whole history
and never starts with one; neither does an id at or past the room's newest
message, even in a room that holds nothing any more: nothing it holds is
missing, and what follows arrives live.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from . import redisurl
from .metrics import Metrics
from .model import Event, Message, Presence, PresenceDiff, StreamKey

log = logging.getLogger(__name__)

# Messages read per replay page. A connection replays one page at a time and
# waits for its socket to drain between writes, so a client that stops
# reading pins at most one page plus the transport's write buffer.
REPLAY_PAGE = 100
# How many connections the heartbeat visits before it lets the loop run.
VISIT_BATCH = 500


class Backend(Protocol):
    """Where messages come from: history reads, and live delivery per room."""

    async def last_id(self, room: str) -> StreamKey:
        """The newest id in the room's history, ``(0, 0)`` when there is none."""

    async def read_after(self, room: str, after: StreamKey, count: int) -> list[Message]:
        """Up to ``count`` messages with ids strictly greater than ``after``, oldest first.

        Each with its ``prev``: what was stored just before it, ``(0, 0)`` for
        the first of the room's history, None when the backend cannot tell.
        """

    def watch(self, room: str, after: StreamKey) -> None:
        """Start handing the room's messages after ``after`` to the hub, in order, none missed.

        Live messages carry their ``prev``; one newer than the message handed
        before it says that what lies between is gone from the history.
        """

    def unwatch(self, room: str) -> None:
        """Stop delivering the room's messages."""


class Sink(Protocol):
    """One SSE or WebSocket connection, as the hub writes to it."""

    def send(self, event: Event) -> bool:
        """Write the event now; False, writing nothing, when the client is not reading.

        A connection that is already closing swallows the write and answers True.
        """

    async def drain(self) -> None:
        """Return once the connection takes writes again."""

    def close(self, reason: str) -> None:
        """End the connection telling the client why (and, for some reasons, to reconnect)."""

    def abort(self) -> None:
        """Drop the connection at once, discarding whatever is still queued for it."""


class Closing(Exception):
    """The worker is stopping and takes no new subscribers."""


# Why the server ends a connection, as told to clients.
SHUTDOWN = "shutdown"
RELOAD = "reload"
IDLE = "idle"
UNAVAILABLE = "unavailable"  # Redis could not be read
OVERFLOW = "overflow"  # a slow consumer, cut off


class Subscription:
    """One connection's membership of a room."""

    _ids = itertools.count(1)

    __slots__ = (
        "_blocked",
        "_pump",
        "close_reason",
        "closed",
        "done",
        "has_presence",
        "id",
        "last_key",
        "last_seen",
        "name",
        "queue",
        "room",
        "since",
        "sink",
        "user_id",
    )

    def __init__(self, room: Room, user_id: str, name: str, since: StreamKey | None) -> None:
        self.id = next(self._ids)
        self.room = room
        self.user_id = user_id
        self.name = name
        self.since = since
        self.last_key: StreamKey = since or room.cursor
        # None: writes go straight to the sink. A deque: events wait for the
        # pump (until the sink is attached, during the replay, or while the
        # client reads slowly).
        self.queue: collections.deque[Event] | None = collections.deque()
        self.sink: Sink | None = None
        self.has_presence = False
        self.closed = False
        self.close_reason = ""
        # When the client last sent anything (WebSocket only; None for SSE).
        self.last_seen: float | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pump: asyncio.Task[None] | None = None
        # The pump waits for the client to take what was written.
        self._blocked = False

    # ----------------------------------------------------------------- writing

    def deliver(self, event: Event) -> None:
        """Write an event now if the connection takes it, else queue it for the pump."""
        if self.closed:
            return
        queue = self.queue
        if isinstance(event, Message):
            if event.key <= self.last_key:
                return
            if queue is None and _missed(event, self.last_key):
                # The pump writes the gap notice first.
                self.queue = queue = collections.deque()
        if queue is None:
            assert self.sink is not None
            if self.sink.send(event):
                self._written(event)
                return
            self.queue = queue = collections.deque()
        queue.append(event)
        if len(queue) > self.room.hub.buffer_limit:
            log.info(
                "cutting off a subscriber of %s that fell %d events behind",
                self.room.name,
                len(queue),
            )
            self.abort()
        elif self._pump is None and self.sink is not None:
            self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def attach(self, sink: Sink) -> None:
        """Start writing to the connection: the replay, then whatever was queued meanwhile."""
        self.sink = sink
        if self.closed:
            return
        queue = self.queue
        if self.since is None and queue is not None:
            # Nothing to replay: write what waited (a presence snapshot, say)
            # now, and only fall back to the pump if the socket is full.
            while queue and not self._gap_due(queue[0]) and sink.send(queue[0]):
                self._written(queue.popleft())
            if not queue:
                self.queue = None
                return
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def _gap_due(self, event: Event) -> bool:
        return isinstance(event, Message) and _missed(event, self.last_key)

    def _written(self, event: Event) -> None:
        if isinstance(event, Message):
            self.last_key = event.key
            self.room.metrics.delivered()

    async def _run_pump(self) -> None:
        try:
            if self.since is not None:
                await self._replay()
                self.since = None
            queue = self.queue
            while queue and not self.closed:
                event = queue.popleft()
                if isinstance(event, Message):
                    if event.key <= self.last_key:
                        continue
                    if _missed(event, self.last_key):
                        await self._write(event.gap)
                await self._write(event)
            if not self.closed:
                # No await since the queue was seen empty: nothing slipped in.
                self.queue = None
        except TimeoutError:  # before OSError, its base class
            log.info("cutting off a subscriber of %s that stopped reading", self.room.name)
            self.abort()
        except redisurl.FAILURES as exc:
            if not self.closed:  # (else it was cut off while the pump waited for it)
                log.info("replay of %s failed: %s", self.room.name, exc)
                self.close(UNAVAILABLE)
        finally:
            self._pump = None

    async def _replay(self) -> None:
        hub = self.room.hub
        after = self.since
        assert after is not None
        sent = 0
        try:
            while not self.closed:
                page = await hub.backend.read_after(self.room.name, after, REPLAY_PAGE)
                for message in page:
                    if message.key > self.last_key:
                        if _missed_on_resume(message, self.last_key):
                            await self._write(message.gap)
                        await self._write(message)
                        sent += 1
                if len(page) < REPLAY_PAGE:
                    return
                after = page[-1].key
        finally:
            self.room.metrics.replayed(sent)

    async def _write(self, event: Event) -> None:
        """Write one event, waiting (within ``idle_timeout_s``) for the socket to drain."""
        sink = self.sink
        assert sink is not None
        while not sink.send(event):
            if self.closed:
                return
            # Raises TimeoutError for a client that stopped reading.
            self._blocked = True
            try:
                async with asyncio.timeout(self.room.hub.idle_timeout_s):
                    await sink.drain()
            finally:
                self._blocked = False
        self._written(event)

    def writable(self) -> bool:
        """True when writes go straight to the connection (nothing queued)."""
        return self.queue is None

    # ----------------------------------------------------------------- ending

    def close(self, reason: str) -> None:
        """End the connection gracefully, telling the client why.

        Unless the client is not taking what was already written: the goodbye
        would wait behind it (and the socket with it) for as long as the
        client likes. Such a connection is cut off.
        """
        if self.closed:
            return
        if self._blocked:
            self.abort()
            return
        self._end(reason)
        if self.sink is not None:
            self.sink.close(reason)

    def abort(self) -> None:
        """Cut the connection off at once (a slow consumer, a dead peer), with a reset."""
        if self.closed:
            return
        self.room.metrics.slow_consumer_dropped()
        self._end(OVERFLOW)
        if self.sink is not None:
            self.sink.abort()

    def _end(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self.queue = collections.deque()  # never None again: no more direct writes
        if not self.done.done():
            self.done.set_result(None)

    async def stop(self) -> None:
        """Stop the pump, if one runs; called by the transport when the connection ends."""
        if not self.closed:
            self._end("gone")
        pump = self._pump
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


class Room:
    __slots__ = ("cursor", "hub", "metrics", "name", "presence", "subscriptions")

    def __init__(self, hub: Hub, name: str, cursor: StreamKey) -> None:
        self.hub = hub
        self.name = name
        self.metrics = hub.metrics
        # The id up to which this worker has dispatched the room's messages.
        self.cursor = cursor
        self.subscriptions: dict[int, Subscription] = {}
        self.presence: Presence | None = None


class Hub:
    """Rooms with local subscribers, and the cursor of each."""

    def __init__(
        self,
        backend: Backend,
        *,
        buffer_limit: int,
        idle_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.buffer_limit = buffer_limit
        self.idle_timeout_s = idle_timeout_s
        self.rooms: dict[str, Room] = {}
        self._joining: dict[str, asyncio.Task[Room]] = {}
        self.closing = False
        # Why connections will be closed when the worker stops.
        self.stop_reason = SHUTDOWN

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
        cursor = await self.backend.last_id(name)
        room = Room(self, name, cursor)
        self.rooms[name] = room
        self.backend.watch(name, cursor)
        return room

    async def subscribe(
        self, room_name: str, user_id: str, name: str, since: StreamKey | None
    ) -> Subscription:
        """Join a room; events queue until :meth:`Subscription.attach` gives them a sink."""
        if self.closing:
            raise Closing
        if since is not None and since > (room := await self._room(room_name)).cursor:
            # Newer than this worker has seen: either a message still on its
            # way here, or an id the room never had (another room's, or from
            # before Redis lost data). The latter would wait for ever for a
            # message after it: resume from the room's newest instead.
            since = min(since, await self.backend.last_id(room_name))
        room = await self._room(room_name)
        # A room dropped while we awaited its cursor is created again.
        while self.rooms.get(room_name) is not room:
            room = await self._room(room_name)
        if self.closing:
            raise Closing
        subscription = Subscription(room, user_id, name, since)
        room.subscriptions[subscription.id] = subscription
        if room.presence is not None:
            subscription.has_presence = True
            subscription.deliver(room.presence)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        room = subscription.room
        if room.subscriptions.pop(subscription.id, None) is not None:
            self.metrics.closed += 1
        if not room.subscriptions and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.backend.unwatch(room.name)

    def dispatch(self, room_name: str, messages: list[Message]) -> None:
        """Write newly stored messages of a room to every local subscriber.

        The hot path: one pass over the room's subscribers per message,
        writing the same bytes to each; only connections with a queue take
        the slow path.
        """
        room = self.rooms.get(room_name)
        if room is None:
            return
        subscriptions = list(room.subscriptions.values())
        direct = 0
        stored_ms: list[int] = []
        for message in messages:
            key = message.key
            if key <= room.cursor:
                continue
            prev = message.prev
            hole = prev is not None and prev > room.cursor
            room.cursor = key
            stored_ms.append(key[0])
            if hole:
                # What came between was trimmed before this worker read it:
                # each subscriber is told first (see Subscription.deliver).
                for sub in subscriptions:
                    sub.deliver(message)
                continue
            for sub in subscriptions:
                if sub.queue is None and sub.last_key < key and sub.sink.send(message):  # type: ignore[union-attr]
                    sub.last_key = key
                    direct += 1
                else:
                    sub.deliver(message)
        # Counted once per dispatch, not per write: the batch is one file write.
        self.metrics.dispatched(direct, stored_ms)

    async def set_presence(
        self, room_name: str, online: list[dict[str, str]] | None, count: int
    ) -> None:
        """Tell local subscribers what changed in the room's presence.

        ``online`` is None in rooms too big to list. Subscribers that have a
        snapshot get only the difference; a change between listed and
        counted sends everyone a new snapshot. A big room is told in
        batches, letting the loop run in between.
        """
        room = self.rooms.get(room_name)
        if room is None:
            return
        old = room.presence
        new = Presence(online, count)
        diff: PresenceDiff | None = None
        if old is not None and (old.online is None) == (online is None):
            diff = _difference(old, new)
            if diff is None:
                return
        room.presence = new
        for n, sub in enumerate(list(room.subscriptions.values()), 1):
            if diff is not None and sub.has_presence:
                sub.deliver(diff)
            else:
                sub.has_presence = True
                sub.deliver(new)
            if n % VISIT_BATCH == 0:
                await asyncio.sleep(0)

    def subscriptions(self) -> Iterator[Subscription]:
        for room in list(self.rooms.values()):
            yield from list(room.subscriptions.values())

    async def visit(
        self, visitor: Callable[[Subscription], None], part: int = 0, parts: int = 1
    ) -> None:
        """Call ``visitor`` on one share of the subscriptions (those whose id is
        ``part`` modulo ``parts``), letting the loop run between batches."""
        n = 0
        for sub in self.subscriptions():
            if sub.id % parts != part or sub.closed:
                continue
            visitor(sub)
            n += 1
            if n % VISIT_BATCH == 0:
                await asyncio.sleep(0)

    def close_all(self, reason: str) -> None:
        self.closing = True
        for subscription in self.subscriptions():
            subscription.close(reason)


def _missed(message: Message, last_key: StreamKey) -> bool:
    """Whether messages between ``last_key`` and this live message are gone."""
    prev = message.prev
    return prev is not None and prev > last_key


def _missed_on_resume(message: Message, last_key: StreamKey) -> bool:
    """Whether a client that resumed from ``last_key`` may have missed messages before this one.

    ``(0, 0)`` asks for the whole history. A ``prev`` of ``(0, 0)`` after a
    real id means the room's history began again after that id: what the
    client missed of the old one cannot be known, so it is told.
    """
    if last_key == (0, 0):
        return False
    prev = message.prev
    return prev is None or prev == (0, 0) or prev > last_key


def _difference(old: Presence, new: Presence) -> PresenceDiff | None:
    if new.online is None or old.online is None:
        return None if new.count == old.count else PresenceDiff([], [], new.count)
    before = {user["user_id"]: user for user in old.online}
    after = {user["user_id"]: user for user in new.online}
    joined = [user for uid, user in after.items() if before.get(uid) != user]
    left = [user for uid, user in before.items() if uid not in after]
    if not joined and not left and new.count == old.count:
        return None
    return PresenceDiff(joined, left, new.count)
