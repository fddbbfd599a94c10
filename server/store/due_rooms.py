"""Which rooms have webhook events to deliver, and when: the sharded due sets.

A room with events in its outbox is in one due set
(:func:`~server.store.keys.due_key_of`), scored by when it is due, in ms of
Redis' clock (0: now). Sixteen sets, each with a hash tag of its own, so that
on a cluster they spread over the nodes; a worker reads them all in one
round trip (a few on a cluster: one per node). No KEYS, no scan of the
keyspace but the sweep's: once a minute, one worker of all looks for
outboxes that have events and no mark (their writer died between the
script and the mark), with SCAN on every primary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .batch import run as run_scripts
from .keys import (
    DUE_SHARDS,
    OUTBOX_PATTERN,
    SWEEP_LOCK_KEY,
    due_key,
    due_key_of,
    outbox_key,
)

SWEEP_BATCH = 500

# KEYS[1]: a due set. Up to ARGV[1] rooms due now, moved ARGV[2] ms ahead.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rooms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, room in ipairs(rooms) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), room)
end
return rooms
"""

# KEYS[1]: a due set. Room ARGV[1] is due in ARGV[2] ms (by Redis' clock);
# ARGV[3] 'XX': only if it is there.
_DUE_IN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == 'XX' then
  return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""


class DueRooms:
    """The due sets."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self.due_in_script = redis.register_script(_DUE_IN)

    async def claim(
        self, limit: int, ahead_ms: int, first_shard: int = 0
    ) -> tuple[list[str], bool]:
        """Up to ``limit`` rooms due now (of each due set), moved ``ahead_ms``
        ahead; and whether more may be due (a set gave ``limit``)."""
        order = [(first_shard + i) % DUE_SHARDS for i in range(DUE_SHARDS)]
        calls = [(self._claim, [due_key(shard)], [limit, ahead_ms]) for shard in order]
        replies = await run_scripts(self.redis, *calls)
        rooms = list(dict.fromkeys(str(room) for rooms in replies for room in rooms))
        return rooms, any(len(rooms) >= limit for rooms in replies)

    async def due_in(self, room: str, delay_ms: int) -> None:
        await self.due_in_script(keys=[due_key_of(room)], args=[room, delay_ms, ""])

    async def due_now(self, rooms: Iterable[str], *, added: bool = False) -> None:
        """The rooms are due at once (``added``: also those not in their set;
        else a room due later keeps its time)."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            if added:
                pipe.zadd(due_key_of(room), {room: 0}, nx=True)
            else:
                pipe.zadd(due_key_of(room), {room: 0}, xx=True)
        await pipe.execute()

    async def done(self, room: str) -> None:
        await self.redis.zrem(due_key_of(room), room)

    async def sweep(self, every_s: int) -> int | None:
        """Mark due every room whose outbox has events (a mark may have been
        lost: its writer died between the script and the mark). Done by one
        worker of all every ``every_s``: None when it was another's turn,
        else how many rooms were found with events."""
        if not await self.redis.set(SWEEP_LOCK_KEY, str(time.time()), nx=True, ex=every_s):
            return None
        options: dict[str, object] = {"match": OUTBOX_PATTERN, "count": 1000, "_type": "stream"}
        if isinstance(self.redis, RedisCluster):
            options["target_nodes"] = RedisCluster.PRIMARIES
        found = 0
        keys: list[str] = []
        async for key in self.redis.scan_iter(**options):  # type: ignore[arg-type]
            keys.append(str(key))
            if len(keys) >= SWEEP_BATCH:
                found += await self._mark_pending(keys)
                keys = []
        return found + await self._mark_pending(keys)

    async def _mark_pending(self, keys: list[str]) -> int:
        rooms = [room for room in (_room_of(key) for key in keys) if room]
        if not rooms:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.xlen(outbox_key(room))
        lengths = await pipe.execute()
        pending = [room for room, length in zip(rooms, lengths, strict=True) if length]
        if pending:
            await self.due_now(pending, added=True)
        return len(pending)


def _room_of(key: str) -> str | None:
    start, end = key.find("{"), key.rfind("}")
    room = key[start + 1 : end] if 0 <= start < end else None
    return room if room and outbox_key(room) == key else None
