"""One connection's membership of a room, and how it is written.

Fan-out writes the bytes each message was encoded to once straight to every
connection of the room (:meth:`Sink.send`), with no task woken per
connection. Only a connection that cannot take a write right now (its
client reads slowly, or it is still replaying history) gets a queue, and a
pump task that drains it as the connection drains; when the queue is empty
the connection goes back to direct writes. A queue that outgrows
``buffer_limit`` events, or a connection that does not drain within
``idle_timeout_s``, is cut off: the client resumes by id.

Honest resume: every message carries ``prev``, the id stored just before it.
A message whose ``prev`` is newer than what a connection last got follows
messages that connection will never get (trimmed from the capped history,
or never read by this worker before they were): the connection is sent a
:class:`~server.core.model.Gap` naming that message first. A resumed connection
first gets what the history holds after its resume id (see
:mod:`server.core.replay`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from typing import TYPE_CHECKING, Protocol

from .close_reason import CloseReason
from .identity import Expiry
from .ids import MessageId
from .model import Event, Message
from .replay import replay

if TYPE_CHECKING:
    from .hub import Room

log = logging.getLogger(__name__)

# How many connections are visited (pinged, told) before the loop may run.
VISIT_BATCH = 500


class Sink(Protocol):
    """One SSE or WebSocket connection, as the hub writes to it."""

    def send(self, event: Event) -> bool:
        """Write the event now; False, writing nothing, when the client is not reading.

        A connection that is already closing swallows the write and answers True.
        """

    async def drain(self) -> None:
        """Return once the connection takes writes again."""

    def close(self, reason: CloseReason) -> None:
        """End the connection telling the client why (and, for some reasons, to reconnect)."""

    def abort(self) -> None:
        """Drop the connection at once, discarding whatever is still queued for it."""


class Subscription:
    """One connection's membership of a room."""

    _ids = itertools.count(1)

    __slots__ = (
        "_blocked",
        "_pump",
        "close_reason",
        "closed",
        "done",
        "expiry",
        "has_presence",
        "id",
        "last_id",
        "last_seen",
        "queue",
        "room",
        "since",
        "sink",
        "user_id",
    )

    def __init__(self, room: Room, user_id: str, since: MessageId | None) -> None:
        self.id = next(self._ids)
        self.room = room
        self.user_id = user_id
        self.since = since
        self.last_id: MessageId = since or room.cursor
        # None: writes go straight to the sink. A deque: events wait for the
        # pump (until the sink is attached, during the replay, or while the
        # client reads slowly).
        self.queue: collections.deque[Event] | None = collections.deque()
        self.sink: Sink | None = None
        self.has_presence = False
        self.closed = False
        self.expiry: Expiry | None = None  # signed in: when that ends
        self.close_reason: CloseReason | None = None
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
            if event.parsed_id <= self.last_id:
                return
            if queue is None and _missed(event, self.last_id):
                # The pump writes the gap notice first.
                self.queue = queue = collections.deque()
        if queue is None:
            assert self.sink is not None
            if self.sink.send(event):
                self.wrote(event)
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
                self.wrote(queue.popleft())
            if not queue:
                self.queue = None
                return
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    def _gap_due(self, event: Event) -> bool:
        return isinstance(event, Message) and _missed(event, self.last_id)

    def wrote(self, event: Event) -> None:
        """Note that ``event`` was written to the connection."""
        if isinstance(event, Message):
            self.last_id = event.parsed_id
            self.room.metrics.delivered()

    async def _run_pump(self) -> None:
        try:
            if self.since is not None:
                await replay(self)
                self.since = None
            queue = self.queue
            while queue and not self.closed:
                event = queue.popleft()
                if isinstance(event, Message):
                    if event.parsed_id <= self.last_id:
                        continue
                    if _missed(event, self.last_id):
                        await self._write(event.gap)
                await self._write(event)
            if not self.closed:
                # No await since the queue was seen empty: nothing slipped in.
                self.queue = None
        except TimeoutError:  # before OSError, its base class
            log.info("cutting off a subscriber of %s that stopped reading", self.room.name)
            self.abort()
        except self.room.hub.backend.failures as exc:
            if not self.closed:  # (else it was cut off while the pump waited for it)
                log.info("replay of %s failed: %s", self.room.name, exc)
                self.close(CloseReason.UNAVAILABLE)
        finally:
            self._pump = None

    async def _write(self, event: Event) -> None:
        """Write one event, waiting (within ``idle_timeout_s``) for the socket to drain."""
        sink = self.sink
        assert sink is not None
        while not sink.send(event):
            if self.closed:
                return
            await self.drained()
        self.wrote(event)

    async def drained(self) -> None:
        """Return once the socket takes writes again; TimeoutError after ``idle_timeout_s``
        (a client that stopped reading)."""
        assert self.sink is not None
        self._blocked = True
        try:
            async with asyncio.timeout(self.room.hub.idle_timeout_s):
                await self.sink.drain()
        finally:
            self._blocked = False

    def writable(self) -> bool:
        """True when writes go straight to the connection (nothing queued)."""
        return self.queue is None

    # ----------------------------------------------------------------- ending

    def close(self, reason: CloseReason) -> None:
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
        self._end(CloseReason.OVERFLOW)
        if self.sink is not None:
            self.sink.abort()

    def _end(self, reason: CloseReason) -> None:
        self.closed = True
        self.close_reason = reason
        self.queue = collections.deque()  # never None again: no more direct writes
        if not self.done.done():
            self.done.set_result(None)

    async def stop(self) -> None:
        """Stop the pump, if one runs; called by the transport when the connection ends."""
        if not self.closed:
            self._end(CloseReason.GONE)
        pump = self._pump
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def _missed(message: Message, last_id: MessageId) -> bool:
    """Whether messages between ``last_id`` and this live message are gone."""
    prev = message.prev
    return prev is not None and prev > last_id
