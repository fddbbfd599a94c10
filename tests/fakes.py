"""The hub's Redis backend and connections in memory, for testing the core with neither."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from server.common.metrics import Metrics
from server.core.hub import Hub
from server.core.ids import MessageId
from server.core.model import Event, Gap, Message
from server.core.subscription import Subscription


def message(n: int, room: str = "r") -> Message:
    """Message ``n-0``, stored right after ``n-1`` (the room's first for 1)."""
    return stored_after((n - 1, 0) if n > 1 else (0, 0), n, room)


def stored_after(prev: MessageId | None, n: int, room: str = "r") -> Message:
    """Message ``n-0`` stored right after ``prev`` (None: not known)."""
    return Message(f"{n}-0", room, "u-1", "n", f"t{n}", 0.0, prev)


class MemoryBackend:
    """Rooms' capped histories in lists; records what the hub asks to watch."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.history: dict[str, list[Message]] = {}
        self.watched: dict[str, MessageId] = {}
        self.reads = 0
        self.before_read: Callable[[], None] | None = None
        # While set and cleared, reads wait for it: ``reading`` counts them.
        self.read_gate: asyncio.Event | None = None
        self.reading = 0
        self.most_reading = 0

    def trim(self, room: str, keep: int) -> None:
        """Drop all but the newest ``keep`` messages, as the capped stream does."""
        self.history[room] = self.history[room][-keep:]

    async def last_id(self, room: str) -> MessageId:
        await self.release.wait()
        messages = self.history.get(room, [])
        return messages[-1].parsed_id if messages else (0, 0)

    async def read_after(self, room: str, after: MessageId, count: int) -> list[Message]:
        self.reads += 1
        if self.before_read is not None:
            self.before_read()
        if self.read_gate is not None:
            self.reading += 1
            self.most_reading = max(self.most_reading, self.reading)
            try:
                await self.read_gate.wait()
            finally:
                self.reading -= 1
        return [m for m in self.history.get(room, []) if m.parsed_id > after][:count]

    def watch(self, room: str, after: MessageId) -> None:
        self.watched[room] = after

    def unwatch(self, room: str) -> None:
        del self.watched[room]


class MemorySink:
    """A connection: keeps what was written; ``paused`` plays a client that does not read."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.paused = False
        self.pause_after: int | None = None  # stop reading once this many were written
        self.aborted = False
        self.closed_with: str | None = None
        self._resumed = asyncio.Event()

    def send(self, event: Event) -> bool:
        if self.paused or len(self.events) == self.pause_after:
            self.paused = True
            return False
        self.events.append(event)
        return True

    async def drain(self) -> None:
        while self.paused:
            self._resumed.clear()
            await self._resumed.wait()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    def close(self, reason: str) -> None:
        self.closed_with = reason

    def abort(self) -> None:
        self.aborted = True

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events if isinstance(e, Message)]

    @property
    def story(self) -> list[str]:
        """Messages and gap notices in the order written: ``["gap 6-0", "6-0", ...]``."""
        return [
            e.id if isinstance(e, Message) else f"gap {e.first_id}"
            for e in self.events
            if isinstance(e, (Message, Gap))
        ]

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def make_hub(
    backend: MemoryBackend, *, limit: int = 100, idle: float = 5.0, replays: int = 16
) -> Hub:
    metrics = Metrics()
    return Hub(backend, buffer_limit=limit, idle_timeout_s=idle, metrics=metrics, replays=replays)


async def settled(sub: Subscription) -> None:
    """Wait until the subscription writes straight to its sink (its queue is gone)."""
    async with asyncio.timeout(2):
        while not sub.writable() and not sub.closed:
            await asyncio.sleep(0.001)


async def live(hub: Hub, user_id: str = "u-1") -> tuple[Subscription, MemorySink]:
    """A subscription of ``user_id`` to room ``r`` writing straight to a fresh sink."""
    sink = MemorySink()
    sub = await hub.subscribe("r", user_id, None)
    sub.attach(sink)
    await settled(sub)
    return sub, sink
