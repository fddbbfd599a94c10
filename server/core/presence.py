"""Presence as subscribers see it: snapshots, differences, and batched announcements.

Who is online is kept in Redis (:mod:`server.store.presence_store`); when it
changes there, a notice on the room's channel reaches every worker with
clients in the room, and each announces the room here: it reads the room's
presence and tells its local subscribers. Announcements are batched: a
burst of joins in one room costs one read and one difference per batch,
sent to each subscriber once. Rooms too big to list (counts only) are
announced at most once a second, and less often where the worker holds
thousands of connections in such rooms (see :data:`COUNT_WRITES_PER_S`).

A subscriber that has a snapshot gets only the difference; a change
between listed and counted sends everyone a new snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .model import Online, Presence, PresenceDiff
from .subscription import VISIT_BATCH

if TYPE_CHECKING:
    from .hub import Hub, Room

log = logging.getLogger(__name__)

PRESENCE_BATCH_S = 0.05  # rooms that list their users
COUNT_BATCH_S = 1.0  # rooms that only count them
# A new count goes to every local subscriber of the room: in a room of ten
# thousand, ten thousand writes. Counts go out less often where a worker
# holds more connections in counted rooms than this many a second (up to
# COUNT_BATCH_MAX_S apart), so that they cost a worker at most that many
# writes a second, however big and however many the rooms.
COUNT_WRITES_PER_S = 2000
COUNT_BATCH_MAX_S = 10.0

# Reads each room's online users (None above the list limit) and their count.
Reader = Callable[[list[str], int], Awaitable[dict[str, tuple[Online | None, int]]]]


async def tell(room: Room, online: Online | None, count: int) -> None:
    """Tell the room's local subscribers what changed in its presence.

    ``online`` is None in rooms too big to list. A big room is told in
    batches, letting the loop run in between.
    """
    old = room.presence
    new = Presence(online, count)
    diff: PresenceDiff | None = None
    if old is not None and (old.online is None) == (online is None):
        diff = difference(old, new)
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


def counted(room: Room) -> bool:
    """Whether the room's local subscribers are told counts only (it is too big to list)."""
    return room.presence is not None and room.presence.online is None


def difference(old: Presence, new: Presence) -> PresenceDiff | None:
    """What changed from ``old`` to ``new``; None when nothing did."""
    if new.online is None or old.online is None:
        return None if new.count == old.count else PresenceDiff([], [], new.count)
    before = {user["user_id"]: user for user in old.online}
    after = {user["user_id"]: user for user in new.online}
    joined = [user for uid, user in after.items() if before.get(uid) != user]
    left = [user for uid, user in before.items() if uid not in after]
    if not joined and not left and new.count == old.count:
        return None
    return PresenceDiff(joined, left, new.count)


class Announcer:
    """Announces rooms' presence to local subscribers, in batches.

    ``read`` gets presence from the store; ``failures`` are the errors it
    raises when the store cannot be reached (the next heartbeat's notices
    announce again).
    """

    def __init__(
        self,
        hub: Hub,
        read: Reader,
        list_max: int,
        failures: tuple[type[BaseException], ...],
    ) -> None:
        self.hub = hub
        self.read = read
        self.list_max = list_max
        self.failures = failures
        self._pending: dict[str, float] = {}  # room -> when to announce it
        self._last: dict[str, float] = {}  # room -> when it was last announced
        # Local subscribers of rooms told counts only, counted again at most
        # once a second (it walks every room).
        self._counted = 0
        self._counted_at = 0.0
        self._wake = asyncio.Event()
        self._flush: asyncio.Task[None] | None = None
        self._closed = False

    def announce_soon(self, room: str) -> None:
        """Announce the room's presence shortly, together with other joins and leaves."""
        if self._closed or room in self._pending:
            return
        local = self.hub.rooms.get(room)
        delay = 0.0
        if local is not None and counted(local):
            # Each counted room told once per this many seconds: as many
            # writes a second in all as the worker's budget.
            spread_s = self._counted / COUNT_WRITES_PER_S
            delay = min(COUNT_BATCH_MAX_S, max(COUNT_BATCH_S, spread_s))
        now = time.monotonic()
        self._pending[room] = max(now + PRESENCE_BATCH_S, self._last.get(room, 0) + delay)
        self._wake.set()
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._announce_pending())

    async def _announce_pending(self) -> None:
        while self._pending:
            self._wake.clear()
            now = time.monotonic()
            due = [room for room, when in self._pending.items() if when <= now]
            if not due:
                wait = min(self._pending.values()) - now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            for room in due:
                del self._pending[room]
                self._last[room] = now
            try:
                await self.announce(due)
            except self.failures as exc:
                log.debug("presence not announced (%s); the next tick will", exc)
        # Forget rooms whose limit has passed.
        cutoff = time.monotonic() - COUNT_BATCH_MAX_S
        self._last = {room: when for room, when in self._last.items() if when > cutoff}

    async def close(self) -> None:
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush

    async def announce(self, rooms: list[str]) -> None:
        """Read the rooms' presence and tell local subscribers what changed."""
        rooms = [room for room in rooms if room in self.hub.rooms]
        if not rooms:
            return
        presence = await self.read(rooms, self.list_max)
        for room, (online, count) in presence.items():
            await self.hub.set_presence(room, online, count)
        now = time.monotonic()
        if now - self._counted_at < COUNT_BATCH_S:
            return
        self._counted_at = now
        held = self.hub.rooms.values()
        self._counted = sum(len(local.subscriptions) for local in held if counted(local))
