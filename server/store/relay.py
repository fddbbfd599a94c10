"""Live delivery: each worker's pub/sub subscriptions, and the catch-up that fills their holes.

Each worker subscribes to exactly the channels of the rooms its clients
are in, added and removed as rooms gain their first or lose their last
local client (through the connections of :mod:`server.store.pubsub`). A message
costs a worker one pub/sub frame, whatever the number of rooms it listens
to.

Pub/sub loses what is published while a worker is not subscribed, so the
stream fills every hole: after each SUBSCRIBE is confirmed (on watching a
room, and again after every reconnect), and whenever a message arrives
whose previous id is not the last one the worker passed on, the worker
reads the stream from its cursor and holds live messages back until it
has caught up. Messages reach the hub in id order, each once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..common.metrics import Metrics
from ..core.ids import MessageId
from ..core.model import Message
from .broker import Broker
from .failures import FAILURES
from .keys import DISCONNECT_PREFIX, SIGNED_OUT_PREFIX, channel, room_of
from .publish import parse_live
from .pubsub import Link, nodes_for, retry_after
from .typing_store import parse_notice

log = logging.getLogger(__name__)

FILL_PAGE = 500  # messages read per catch-up read
PENDING_MAX = 1000  # live messages held per room while it catches up


class _Feed:
    """One watched room: where its delivery stands."""

    __slots__ = ("cursor", "pending")

    def __init__(self, cursor: MessageId) -> None:
        self.cursor = cursor
        # None: live. A list: catching up from the stream, holding live
        # messages (with their previous ids) back until it has.
        self.pending: list[tuple[MessageId, Message]] | None = []


class Relay:
    """The worker's pub/sub connections: the live half of the hub's backend.

    With :class:`Broker`'s reads, the hub's :class:`~server.core.backend.Backend`: messages
    go to their callback (:meth:`deliver_to`) in id order, notices to theirs. One
    Redis (or the primary Sentinel names) gets one connection. A Redis Cluster
    gets one per primary that serves a watched room, subscribed to its rooms'
    shard channels (``SSUBSCRIBE``). When a primary fails or a slot moves, the
    relay reads the cluster's slots again and moves the rooms concerned to the
    connection of their new primary; their feeds catch up from the streams as
    after any reconnect.
    """

    # What a replay that meets one of these tells its client: come back later.
    failures: tuple[type[BaseException], ...] = FAILURES

    def __init__(self, redis_url: str, broker: Broker, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_messages: Callable[[str, list[Message]], None] = lambda room, messages: None
        self.on_presence: Callable[[str], None] = lambda room: None
        self.on_signed_out: Callable[[str, str], None] = lambda room, session: None
        # Disconnects (the room, why, the user whose streams there end) and
        # typing notices (the room, the user id and its name).
        self.on_disconnect: Callable[[str, str, str], None] = lambda room, why, user: None
        self.on_typing: Callable[[str, str, str], None] = lambda room, user, name: None
        self.on_reconnected: Callable[[], None] = lambda: None  # (see pubsub.Listener)
        self.nodes = nodes_for(redis_url)
        self._feeds: dict[str, _Feed] = {}
        self._links: dict[str, Link] = {}  # by node
        self._room_links: dict[str, Link] = {}
        self._to_fill: dict[str, None] = {}  # an ordered set
        self._fill_ready = asyncio.Event()
        self._remapping: asyncio.Task[None] | None = None
        self._stopping = False

    def deliver_to(
        self,
        on_messages: Callable[[str, list[Message]], None],
        on_presence: Callable[[str], None],
        on_signed_out: Callable[[str, str], None] | None = None,
        on_disconnect: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """Where messages, presence notices, sign-outs (a session's tag,
        whose streams in the room end) and disconnects go."""
        self.on_messages = on_messages
        self.on_presence = on_presence
        if on_signed_out is not None:
            self.on_signed_out = on_signed_out
        if on_disconnect is not None:
            self.on_disconnect = on_disconnect

    # ------------------------------------------------------------- the contract

    async def last_id(self, room: str) -> MessageId:
        return await self.broker.last_id(room)

    async def read_after(self, room: str, after: MessageId, count: int) -> list[Message]:
        return await self.broker.read_after(room, after, count)

    def watch(self, room: str, after: MessageId) -> None:
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

    def _link(self, node: str) -> Link:
        link = self._links.get(node)
        if link is None:
            self._links[node] = link = Link(self, node)
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
            except FAILURES as exc:
                log.debug("cannot read the cluster's slots: %r", exc)
                return  # the failing connection asks again after its backoff
            for room, link in list(self._room_links.items()):
                if self.nodes.node_of(channel(room)) != link.node:
                    link.remove(room, unsubscribe=False)
                    self.resubscribing([room])  # until the new subscription catches up
                    self._place(room)
            for node, link in list(self._links.items()):
                if not link.rooms:
                    del self._links[node]
                    await link.close()
        finally:
            self._remapping = None

    # ------------------------------------------------------------- what arrives

    def handle(self, link: Link, reply: Any) -> None:  # noqa: PLR0912  (one branch a kind)
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
            elif data.startswith(SIGNED_OUT_PREFIX):
                self.on_signed_out(room, data[len(SIGNED_OUT_PREFIX) :])
            elif data.startswith(DISCONNECT_PREFIX):
                why, _, user_id = data[len(DISCONNECT_PREFIX) :].partition("\n")
                self.on_disconnect(room, why, user_id)
            elif data.startswith("m\n"):
                parsed = parse_live(room, data)
                if parsed is None:
                    log.warning("ignoring a malformed message on %s", channel_name)
                else:
                    self._arrived(room, feed, *parsed)
            elif (typing := parse_notice(data)) is not None:
                self.on_typing(room, *typing)
        elif kind in ("subscribe", "ssubscribe"):
            # Now nothing published to the room can be missed: read the
            # stream from the cursor to cover what came before, and presence
            # (notices published while not subscribed are lost too).
            self._schedule_fill(room, feed)
            self.on_presence(room)
        elif kind == "sunsubscribe" and room in link.rooms:
            # Not asked for: Redis Cluster moved the room's slot elsewhere.
            self.resubscribing([room])
            self.link_failed()

    def _arrived(self, room: str, feed: _Feed, prev: MessageId, message: Message) -> None:
        if feed.pending is not None:
            if len(feed.pending) >= PENDING_MAX:
                # The catch-up read will find these in the stream.
                feed.pending.clear()
            feed.pending.append((prev, message))
        elif prev == feed.cursor:
            feed.cursor = message.parsed_id
            self.on_messages(room, [message])
        elif message.parsed_id > feed.cursor:
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
                except FAILURES as exc:
                    self.metrics.redis_error()
                    failures += 1
                    if failures == 1:
                        log.warning("cannot catch up %s from its stream: %s", room, exc)
                    self._schedule_fill(room, feed)
                    await asyncio.sleep(retry_after(failures))

    async def _fill(self, room: str, feed: _Feed) -> None:
        """Read the stream after the cursor, then release the held live messages."""
        while True:
            page = await self.broker.read_after(room, feed.cursor, FILL_PAGE)
            if self._feeds.get(room) is not feed:
                return  # unwatched meanwhile
            fresh = [m for m in page if m.parsed_id > feed.cursor]
            if fresh:
                feed.cursor = fresh[-1].parsed_id
                self.on_messages(room, fresh)
            if len(page) < FILL_PAGE:
                break
        held, feed.pending = feed.pending or [], None
        for index, (prev, message) in enumerate(held):
            if message.parsed_id <= feed.cursor:
                continue
            if prev != feed.cursor:
                # Published after our read but not next to it: read again.
                feed.pending = held[index:]
                self._schedule_fill(room, feed)
                return
            feed.cursor = message.parsed_id
            self.on_messages(room, [message])
