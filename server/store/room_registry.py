"""The registry of rooms with history: what the server API lists, a page at a time.

Rooms live in their own keys, spread over a Cluster's shards, so listing
them by scanning the keyspace (``KEYS``, or ``SCAN`` on every node) would
cost the whole keyspace per page. Instead two sorted sets share one hash
tag (one slot, so one script may touch both):

- ``names``: every room, all scored 0, so that ``ZRANGEBYLEX`` pages them in
  name order: ``[prefix`` to ``[prefix\\xff``, and after a page, from its
  last name exclusive (the cursor). A room is listed once and none is
  missed, however the set changes between pages: each page starts strictly
  after the last name the one before saw.
- ``active``: every room scored by its last activity (ms), which is how
  rooms silent past ``room_ttl_s`` (their stream expired) leave the registry.

Writes are kept off the hot path. A room is registered before the message
that creates it is stored (a publish that would create a room is refused
by the publish script, registered here, and stored again; see
:class:`~server.store.publish.NewRoom`): a room with history is never missing
from the registry. Every other message only marks its room as active in the
worker's memory (:meth:`RoomRegistry.touch`); the heartbeat writes the
rooms marked since the last tick in one command (:meth:`RoomRegistry.flush`).
A worker killed before its tick loses only that refresh, which the sweep
corrects: it looks at rooms whose activity is older than ``room_ttl_s``,
asks each stream how long it has to live (``PTTL``), removes those whose
stream is gone, and moves the others' activity to match their stream. A
room is never removed while its stream lives.

A page reads its rooms' last ids and online counts in one pipeline, and
leaves out a room whose stream is gone (expired, not yet swept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from . import failures
from .batch import Batch
from .batch import run as run_scripts
from .keys import stream_key, users_key

log = logging.getLogger(__name__)

# One hash tag for both sets (not a room's: "rooms!" is no room name).
NAMES_KEY = "chat:registry:{rooms!}:names"
ACTIVE_KEY = "chat:registry:{rooms!}:active"
SWEEP_EVERY_S = 60.0  # how often a worker looks for rooms gone silent
SWEEP_BATCH = 200  # rooms looked at per sweep
SLACK_MS = 60_000  # activity a sweep forgives (clocks, a refresh lost with a worker)

# KEYS: names, active. ARGV[1]: now (ms), ARGV[2]: how long the sets live
# (ms); the rest: rooms. Registers each room, and moves its activity forward
# (never back). The sets outlive their newest room's history: written to
# no more, they go as the rooms do.
_TOUCH_SCRIPT = """
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i])
  redis.call('ZADD', KEYS[2], 'GT', ARGV[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return #ARGV - 2
"""

# KEYS: names, active. ARGV[1]: the cutoff (ms); the rest: rooms whose
# streams are gone. Each is removed unless its activity moved past the
# cutoff meanwhile (a message created the room again).
_FORGET_SCRIPT = """
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if not score or tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


class RoomInfo(NamedTuple):
    """What the registry tells of a room with history."""

    room: str
    last_id: str
    length: int
    online: int


def _now_ms() -> int:
    return int(time.time() * 1000)


class RoomRegistry:
    """The rooms with history, registered as they are created and listed in pages."""

    def __init__(self, redis: aioredis.Redis, *, room_ttl_s: int) -> None:
        self.redis = redis
        self.room_ttl_ms = room_ttl_s * 1000
        self._touch = redis.register_script(_TOUCH_SCRIPT)
        self._forget = redis.register_script(_FORGET_SCRIPT)
        self._active: set[str] = set()  # rooms with a message since the last flush
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S

    async def register(self, rooms: list[str]) -> None:
        """Register rooms about to be created (one round trip), before their first message."""
        if rooms:
            lives_ms = self.room_ttl_ms + SLACK_MS
            await run_scripts(
                self.redis, (self._touch, [NAMES_KEY, ACTIVE_KEY], [_now_ms(), lives_ms, *rooms])
            )

    def touch(self, room: str) -> None:
        """A message was stored in ``room``: its activity is written at the next flush."""
        self._active.add(room)

    async def flush(self) -> None:
        """Write the activity of the rooms touched since the last flush (one
        round trip), and now and then sweep rooms gone silent. Called by the
        heartbeat; a failure keeps the rooms for the next call."""
        rooms, self._active = self._active, set()
        try:
            await self.register(sorted(rooms))
        except failures.FAILURES:
            self._active |= rooms
            raise
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            await self.sweep()

    async def sweep(self, batch: int = SWEEP_BATCH) -> int:
        """Remove up to ``batch`` rooms whose stream is gone; how many were removed."""
        now = _now_ms()
        cutoff = now - self.room_ttl_ms - SLACK_MS
        silent = [
            str(room)
            for room in await self.redis.zrangebyscore(ACTIVE_KEY, "-inf", cutoff, 0, batch)
        ]
        if not silent:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for room in silent:
            pipe.pttl(stream_key(room))
        ttls = [int(ttl) for ttl in await pipe.execute()]
        gone = [room for room, ttl in zip(silent, ttls, strict=True) if ttl == -2]
        # A stream that lives: its activity is when it was last written,
        # which its expiry tells (a stream with none is looked at again later).
        alive = {
            room: now if ttl < 0 else now + ttl - self.room_ttl_ms
            for room, ttl in zip(silent, ttls, strict=True)
            if ttl != -2
        }
        if alive:
            await self.redis.zadd(ACTIVE_KEY, alive, gt=True)
        if not gone:
            return 0
        removed = await run_scripts(
            self.redis, (self._forget, [NAMES_KEY, ACTIVE_KEY], [cutoff, *gone])
        )
        return int(removed[0])

    async def page(
        self, prefix: str, after: str | None, limit: int
    ) -> tuple[list[RoomInfo], str | None]:
        """The rooms whose names start with ``prefix``, in name order, after
        the room ``after`` (exclusive), at most ``limit``; and the name to
        go on after, None on the last page."""
        start = b"[" + prefix.encode()
        if after is not None and after >= prefix:
            start = b"(" + after.encode()
        end = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        if start == b"[":
            start = b"-"
        names = [str(n) for n in await self.redis.zrangebylex(NAMES_KEY, start, end, 0, limit + 1)]
        more = len(names) > limit
        names = names[:limit]
        rooms = [info for info in await self.info(names) if info is not None]
        return rooms, names[-1] if more else None

    async def info(self, rooms: list[str]) -> list[RoomInfo | None]:
        """Each room's last id, length and online count (one pipeline); None
        for a room without history."""
        if not rooms:
            return []
        batch = Batch(self.redis)
        replies = [batch.commands(_info_commands(room), _info_of(room)) for room in rooms]
        await batch.run()
        return [reply.value for reply in replies]


def _info_commands(room: str) -> Callable[[Pipeline], None]:
    def add(pipe: Pipeline) -> None:
        pipe.xrevrange(stream_key(room), count=1)
        pipe.xlen(stream_key(room))
        pipe.zcard(users_key(room))

    return add


def _info_of(room: str) -> Callable[[list[Any]], RoomInfo | None]:
    def parse(replies: list[Any]) -> RoomInfo | None:
        last, length, online = replies
        if not last:
            return None
        return RoomInfo(room, str(last[0][0]), int(length), int(online))

    return parse
