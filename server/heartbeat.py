"""The worker heartbeat: ping every stream, close dead and idle ones, keep presence true.

Run by ``aiotools.create_timer`` every ``heartbeat_s``. Pings are not written
here: each stream's own sender writes them, so one stalled client cannot
delay the tick. A stream whose sender made no progress for
``idle_timeout_s`` (its client stopped reading) is aborted; a WebSocket
whose client sent nothing, not even a pong, for that long is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from .config import Config
from .connections import Connections
from .hub import Hub
from .metrics import MetricsStore
from .streams import IDLE

log = logging.getLogger(__name__)

PRESENCE_BATCH_S = 0.05


class Heartbeat:
    def __init__(
        self, hub: Hub, connections: Connections, config: Config, metrics: MetricsStore
    ) -> None:
        self.hub = hub
        self.connections = connections
        self.metrics = metrics
        self.idle_timeout_s = config.idle_timeout_s
        self._failing = False
        self._pending: set[str] = set()
        self._flush: asyncio.Task[None] | None = None
        self._closed = False

    async def tick(self, interval: float) -> None:
        now = time.monotonic()
        alive = []
        for sub in self.hub.subscriptions():
            if now - sub.last_progress > self.idle_timeout_s:
                log.info("aborting stream %s in %s: client stopped reading", sub.id, sub.room.name)
                self.hub.metrics.dropped += 1
                sub.abort()
            elif sub.last_seen is not None and now - sub.last_seen > self.idle_timeout_s:
                log.info("closing stream %s in %s: client silent", sub.id, sub.room.name)
                sub.close(IDLE)
            else:
                sub.ping()
                alive.append((sub.room.name, sub.user_id, sub.id))
        try:
            await self.connections.refresh(alive)
            await self.announce(list(self.hub.rooms))
            await self.metrics.push()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning("heartbeat cannot reach Redis: %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeat reached Redis again")
            self._failing = False

    def announce_soon(self, room: str) -> None:
        """Announce the room's presence shortly, together with other joins and leaves.

        A burst of N clients joining a room would otherwise send N presence
        lists to up to N subscribers each: quadratic in the size of the room.
        """
        if self._closed:
            return
        self._pending.add(room)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._announce_pending())

    async def _announce_pending(self) -> None:
        # Rooms added while an announcement is under way go out in the next round.
        while self._pending:
            await asyncio.sleep(PRESENCE_BATCH_S)
            rooms, self._pending = sorted(self._pending), set()
            try:
                await self.announce(rooms)
            except (RedisError, OSError) as exc:
                log.debug("presence not announced (%s); the next tick will", exc)

    async def close(self) -> None:
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush

    async def announce(self, rooms: list[str]) -> None:
        """Read the rooms' online users from Redis and tell local subscribers of changes."""
        if not rooms:
            return
        for room, online in (await self.connections.online(rooms)).items():
            self.hub.set_presence(room, online)
