"""The per-worker room registry: which rooms have local subscribers, and the cursor of each.

The hub knows nothing of Redis (see :mod:`server.core.backend`). New messages
come from the backend through :meth:`Hub.dispatch`, which writes each to
every subscriber of its room (see :mod:`server.core.subscription`).

No gap and no duplicate: a subscription is added to its room before its
replay is read, so every message is either in the replay (read afterwards,
so it reaches at least as far as the room's cursor) or dispatched live into
the subscription's queue. Each subscription remembers the last id it wrote
and skips anything at or below it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from ..common.metrics import Metrics
from . import presence
from .backend import Backend
from .close_reason import MODERATION, CloseReason
from .ids import MessageId
from .model import Message, Online, Presence
from .replay import REPLAY_PAGE, SharedPages
from .subscription import VISIT_BATCH, Subscription
from .typing_notices import TypingNotice

# How often a worker that closes its streams over a while (a reload) closes the next share.
SPREAD_STEP_S = 0.05


class Closing(Exception):
    """The worker is stopping and takes no new subscribers."""


class Room:
    __slots__ = ("cursor", "hub", "metrics", "name", "presence", "subscriptions")

    def __init__(self, hub: Hub, name: str, cursor: MessageId) -> None:
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
        replays: int,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.buffer_limit = buffer_limit
        self.idle_timeout_s = idle_timeout_s
        # Replays reading or writing a page at once (see server.core.replay), and
        # the messages in a page.
        self.replays = asyncio.Semaphore(replays)
        self.replay_page = replay_page
        # Read once for replays that ask for the same; as many kept as slots.
        self.pages = SharedPages(backend.read_after, most=replays)
        self.rooms: dict[str, Room] = {}
        self._joining: dict[str, asyncio.Task[Room]] = {}
        self.closing = False
        # Why connections will be closed when the worker stops.
        self.stop_reason = CloseReason.SHUTDOWN
        # The worker is on its way out (its streams are being closed over a
        # while): answers close their connections, so clients come back elsewhere.
        self.draining = False

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
        self, room_name: str, user_id: str, since: MessageId | None
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
        subscription = Subscription(room, user_id, since)
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
            message_id = message.parsed_id
            if message_id <= room.cursor:
                continue
            prev = message.prev
            hole = prev is not None and prev > room.cursor
            room.cursor = message_id
            stored_ms.append(message_id[0])
            if hole:
                # What came between was trimmed before this worker read it:
                # each subscriber is told first (see Subscription.deliver).
                for sub in subscriptions:
                    sub.deliver(message)
                continue
            for sub in subscriptions:
                if sub.queue is None and sub.last_id < message_id and sub.sink.send(message):  # type: ignore[union-attr]
                    sub.last_id = message_id
                    direct += 1
                else:
                    sub.deliver(message)
        # Counted once per dispatch, not per write: the batch is one file write.
        self.metrics.dispatched(direct, stored_ms)

    async def set_presence(self, room_name: str, online: Online | None, count: int) -> None:
        """Tell local subscribers what changed in the room's presence (see
        :func:`server.core.presence.tell`); ``online`` is None in rooms too big to list."""
        room = self.rooms.get(room_name)
        if room is not None:
            await presence.tell(room, online, count)

    def counts_only(self, room_name: str) -> bool:
        """Whether the room, as this worker knows it, only counts its users
        (over ``presence_list_max``): False when it does not know."""
        room = self.rooms.get(room_name)
        return room is not None and room.presence is not None and room.presence.online is None

    def typing(self, room_name: str, notice: TypingNotice) -> None:
        """Tell the room's local subscribers but the typer's own connections
        that the user is typing. Rooms that only count their users (over
        ``presence_list_max``) are not told."""
        room = self.rooms.get(room_name)
        if room is None or self.counts_only(room_name):
            return
        typer = notice.user_id
        for sub in list(room.subscriptions.values()):
            if sub.user_id != typer:
                sub.deliver(notice)

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

    def signed_out(self, room_name: str, session: str) -> None:
        """End the streams of the browser session tagged ``session`` in a room."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        for sub in list(room.subscriptions.values()):
            if sub.expiry is not None and sub.expiry.session == session:
                sub.close(CloseReason.SIGNED_OUT)

    def disconnected(self, room_name: str, reason: str, user_id: str) -> None:
        """End the user's streams in a room, for a moderation ``reason``."""
        room = self.rooms.get(room_name)
        if room is None or reason not in MODERATION:
            return
        for sub in list(room.subscriptions.values()):
            if sub.user_id == user_id:
                sub.close(CloseReason(reason))

    async def close_spread(
        self,
        reason: CloseReason,
        window_s: float,
        cut_short: asyncio.Event,
        *,
        crowded: Callable[[], bool] = lambda: False,
        latest_s: float = 0.0,
    ) -> None:
        """Close every stream open now, an equal share each :data:`SPREAD_STEP_S`
        over ``window_s``, so that their clients do not all come back at once.

        While ``crowded()`` says that those who come back are not taken in as
        fast as they come (the accept queue fills up), the next share waits,
        but not past ``latest_s`` from the start (the shares left then go
        on at the interval). The streams not closed yet
        keep receiving meanwhile; once ``cut_short`` is set, the rest are
        left to :meth:`close_all`.
        """
        self.stop_reason = reason
        self.draining = True
        pending = [sub for sub in self.subscriptions() if not sub.closed]
        count, steps = len(pending), max(1, round(window_s / SPREAD_STEP_S))
        interval = window_s / steps
        loop = asyncio.get_running_loop()
        latest = loop.time() + max(window_s, latest_s)
        for step in range(steps):
            # (Shares rounded up: the first closes at least one.)
            end = -(-count * (step + 1) // steps)
            for sub in pending[-(-count * step // steps) : end]:
                sub.close(reason)
            if end == count:
                return
            # The next share an interval after this one, even if this worker
            # fell behind (closing the overdue shares at once would bunch
            # their clients together), and later while the queue is crowded
            # (until ``latest``; then on at the interval).
            due = loop.time() + interval
            while not cut_short.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):
                        await cut_short.wait()
                now = loop.time()
                if now >= latest or not crowded():
                    break
                due = now + SPREAD_STEP_S
            if cut_short.is_set():
                return

    def close_all(self, reason: CloseReason) -> None:
        self.closing = True
        for subscription in self.subscriptions():
            subscription.close(reason)
