"""Open connections as Redis sees them: room presence and the per-session stream limit.

Per room, these keys share the room's hash tag:

- ``counts``: a hash of how many connections each user has in the room;
- ``users``: the room's online users, a sorted set with every score 0 so that
  it pages in user id order (``ZRANGEBYLEX``);
- ``leases``: the workers holding connections in the room, each scored by
  when its lease runs out;
- ``held:<worker>``: a set of the connections (``user|id``) that worker holds
  in the room.

A worker renews its lease on each room it holds connections in once per
heartbeat: one command per room, however many connections. Whoever joins
the room or renews a lease first sweeps the connections of workers whose
lease ran out (they died, or stalled for two heartbeats); a worker whose
lease was swept while it stalled joins its connections again.

Scripts keep the keys in step. When a user comes online in a room (their
first connection) or goes offline (their last), the script publishes a
presence notice on the room's channel, so that every worker with clients in
the room re-reads the room's presence, once per short batch. Joins and
leaves cost a constant number of commands however big the room. A rename
publishes the same notice in every room the user is online in.

The per-session stream limit counts a user's connections in a sorted set of
their own (members ``worker:id|room``), scored by expiry. An entry is
renewed every ``USER_SLICES`` heartbeats (a slice of the connections each
heartbeat), and lasts twice that; a sweep removes the entries of a dead
worker's connections at once, so the long expiry only matters when nobody
sweeps them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from . import redisurl, scripts
from .broker import channel
from .scripts import Call

log = logging.getLogger(__name__)

# KEYS[1]: the open connections of one owner (a user, a client address),
# a sorted set scored by expiry. Drop expired entries, refuse (0) when the
# owner is at the limit, else register the connection (1). ARGV: now,
# expiry, limit, the entry, the key's lifetime (ms). For a user, KEYS[2] and
# ARGV[6] also keep their display name for presence, as long as the set
# (both keys carry the user's tag: one slot).
_LIMIT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[5])
end
return 1
"""

# Shared by the room scripts. KEYS: counts, users, leases, this worker's held
# set. ARGV[1]: lease (ms), ARGV[2]: this worker, ARGV[3]: the channel,
# ARGV[4]: the prefix of held sets. The sweep drops the connections of every
# other worker whose lease ran out and returns them as {worker, 'user|id', ...}
# so that the caller can free their users' stream slots. (Held sets are named
# from the room's tag: every key a script touches is in the room's slot.)
_ROOM_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local changed = false
local function user_of(conn)
  return string.match(conn, '^([^|]*)')
end
local function gone(user)
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    redis.call('ZREM', KEYS[2], user)
    changed = true
  end
end
local swept = {}
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  if worker ~= ARGV[2] then
    local held = ARGV[4] .. worker
    for _, conn in ipairs(redis.call('SMEMBERS', held)) do
      gone(user_of(conn))
      swept[#swept + 1] = worker
      swept[#swept + 1] = conn
    end
    redis.call('DEL', held)
    redis.call('ZREM', KEYS[3], worker)
  end
end
local function renew()
  local fresh = redis.call('ZADD', KEYS[3], lease, ARGV[2]) == 1
  for i = 1, 3 do
    redis.call('PEXPIREAT', KEYS[i], lease)
  end
  -- A dead worker's held set outlives its lease, so that a sweep finds it.
  redis.call('PEXPIREAT', KEYS[4], lease + tonumber(ARGV[1]))
  return fresh
end
"""

_EPILOGUE = """
if changed then
  redis.call('PUBLISH', ARGV[3], 'p')
end
"""

# ARGV[5...]: pairs of (connection, user) to add. The first reply is 1 when
# the lease was not there (see _RENEW_SCRIPT).
_JOIN_SCRIPT = (
    _ROOM_PRELUDE
    + """
local fresh = renew()
for i = 5, #ARGV, 2 do
  if redis.call('SADD', KEYS[4], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1) == 1 then
      redis.call('ZADD', KEYS[2], 0, ARGV[i + 1])
      changed = true
    end
  end
end
"""
    + _EPILOGUE
    + "return {fresh and 1 or 0, swept}\n"
)

# Renews the lease; the first reply is 1 when the lease was not there (this
# worker's connections were swept while it stalled): the caller joins them again.
_RENEW_SCRIPT = (
    _ROOM_PRELUDE
    + """
local fresh = renew()
"""
    + _EPILOGUE
    + "return {fresh and 1 or 0, swept}\n"
)

# ARGV[5]: the connection, ARGV[6]: its user. The last connection the worker
# holds in the room gives up its lease.
_LEAVE_SCRIPT = (
    _ROOM_PRELUDE
    + """
if redis.call('SREM', KEYS[4], ARGV[5]) == 1 then
  gone(ARGV[6])
end
if redis.call('SCARD', KEYS[4]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
"""
    + _EPILOGUE
    + "return swept\n"
)


REFRESH_BATCH = 250  # rooms renewed, or user entries refreshed, per pipeline
USER_SLICES = 20  # a user entry is renewed every this many heartbeats


def room_keys(room: str, worker: str) -> list[str]:
    tag = f"chat:{{{room}}}"
    return [f"{tag}:counts", f"{tag}:users", f"{tag}:leases", f"{tag}:held:{worker}"]


def held_prefix(room: str) -> str:
    return f"chat:{{{room}}}:held:"


def users_key(room: str) -> str:
    return f"chat:{{{room}}}:users"


def streams_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:streams"


def address_streams_key(address: str) -> str:
    return f"chat:address:{{{address}}}:streams"


class Holder(NamedTuple):
    """Whose a connection is: its user, and its client address (budget key)."""

    user_id: str
    address: str


class Opened(NamedTuple):
    """How a connection's registration went."""

    full: str | None  # what is at its limit ("session", "address"), None when registered
    first: list[Any]  # the replies of the scripts that went first


def name_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:name"


def _now_ms() -> int:
    return int(time.time() * 1000)


Online = list[dict[str, str]]


class Connections:
    def __init__(
        self,
        redis: aioredis.Redis,
        worker_token: str,
        *,
        ttl_s: float,
        per_session_limit: int,
        per_address_limit: int,
        name_ttl_s: int,
    ) -> None:
        self.redis = redis
        self.worker_token = worker_token
        self.ttl_ms = int(ttl_s * 1000)
        # A user entry is renewed every USER_SLICES heartbeats (ttl_s is two).
        self.user_ttl_ms = self.ttl_ms * USER_SLICES
        self.per_session_limit = per_session_limit
        self.per_address_limit = per_address_limit
        self.name_ttl_s = name_ttl_s
        self._limit = redis.register_script(_LIMIT_SCRIPT)
        self._join = scripts.register(redis, _JOIN_SCRIPT)
        self._renew = scripts.register(redis, _RENEW_SCRIPT)
        self._leave = scripts.register(redis, _LEAVE_SCRIPT)
        # What this worker holds: room -> {stream id: (user id, address key)}.
        self._held: dict[str, dict[int, Holder]] = {}
        self._ticks = 0
        self._undoing: set[asyncio.Future[None]] = set()

    @staticmethod
    def member(user_id: str, stream_id: int, address: str) -> str:
        """A connection in its worker's held set: whose it is comes first."""
        return f"{user_id}|{stream_id}|{address}"

    def user_member(self, room: str, stream_id: int, worker: str | None = None) -> str:
        """A connection in its user's set: where it is comes last (see :meth:`set_name`)."""
        return f"{worker or self.worker_token}:{stream_id}|{room}"

    def _room_args(self, room: str) -> list[str | int]:
        return [self.ttl_ms, self.worker_token, channel(room), held_prefix(room)]

    async def open(
        self,
        room: str,
        user_id: str,
        name: str,
        stream_id: int,
        address: str,
        *,
        ttl_s: int | None = None,
        pipe: Pipeline | None = None,
        first: Sequence[Call] = (),
    ) -> Opened:
        """Register a connection of a user from a client address (its budget key).

        The user's keys live as long as their session (``ttl_s`` when it is
        new). What ``pipe`` holds and the ``first`` scripts go in the same
        round trip, before the registration.
        """
        now = _now_ms()
        holder = Holder(user_id, address)
        self._held.setdefault(room, {})[stream_id] = holder
        expiry = now + self.user_ttl_ms
        entry = self.user_member(room, stream_id)
        lifetime_ms = (ttl_s or self.name_ttl_s) * 1000
        try:
            # One round trip: the join goes with the limit checks, and is
            # undone in the rare case that a check refuses.
            *firsts, for_session, for_address, (fresh, swept) = await scripts.run(
                self.redis,
                *first,
                (
                    self._limit,
                    [streams_key(user_id), name_key(user_id)],
                    [now, expiry, self.per_session_limit, entry, lifetime_ms, name],
                ),
                (
                    self._limit,
                    [address_streams_key(address)],
                    [now, expiry, self.per_address_limit, entry, self.user_ttl_ms],
                ),
                self._room_call(self._join, room, holder, stream_id),
                pipe=pipe,
            )
        except BaseException:
            # The join may have been applied: undo it, whatever happens to us.
            undo = asyncio.ensure_future(self._undo(room, holder, stream_id))
            self._undoing.add(undo)
            undo.add_done_callback(self._undoing.discard)
            raise
        if not int(for_session) or not int(for_address):
            await self.close(room, holder, stream_id)
            return Opened("session" if not int(for_session) else "address", firsts)
        await self._free(room, swept)
        if int(fresh):
            await self._rejoin(room, but=stream_id)
        return Opened(None, firsts)

    async def _undo(self, room: str, holder: Holder, stream_id: int) -> None:
        try:
            await self.close(room, holder, stream_id)
        except redisurl.FAILURES as exc:
            log.debug("could not undo the join of stream %s: %s", stream_id, exc)

    def _forget(self, room: str, stream_id: int) -> None:
        held = self._held.get(room, {})
        held.pop(stream_id, None)
        if not held:
            self._held.pop(room, None)

    async def close(self, room: str, holder: Holder, stream_id: int) -> None:
        self._forget(room, stream_id)
        entry = self.user_member(room, stream_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(streams_key(holder.user_id), entry)
        pipe.zrem(address_streams_key(holder.address), entry)
        leave = self._room_call(self._leave, room, holder, stream_id)
        (swept,) = await scripts.run(self.redis, leave, pipe=pipe)
        await self._free(room, swept)

    def _room_call(self, script: AsyncScript, room: str, holder: Holder, stream_id: int) -> Call:
        return (
            script,
            room_keys(room, self.worker_token),
            [*self._room_args(room), *self._pair(holder, stream_id)],
        )

    def _pair(self, holder: Holder, stream_id: int) -> tuple[str, str]:
        """A connection and its user, as the room scripts take them."""
        return self.member(holder.user_id, stream_id, holder.address), holder.user_id

    async def refresh(self, parts: int = 1) -> None:
        """Renew this worker's lease on its rooms, and its connections'
        entries in their users' sets, one share of them a call.

        ``parts`` calls renew every room once, and ``parts * USER_SLICES``
        every user entry. Renewing sweeps each room of the connections of
        workers that died, which publishes a presence notice when someone
        went offline.
        """
        tick = self._ticks
        self._ticks += 1
        rooms = [room for room in self._held if hash(room) % parts == tick % parts]
        # In batches: packing one pipeline of thousands of commands would
        # hold the event loop for tens of milliseconds.
        for start in range(0, len(rooms), REFRESH_BATCH):
            batch = rooms[start : start + REFRESH_BATCH]
            calls = [
                (self._renew, room_keys(room, self.worker_token), self._room_args(room))
                for room in batch
            ]
            replies = await scripts.run(self.redis, *calls)
            for room, (fresh, swept) in zip(batch, replies, strict=True):
                await self._free(room, swept)
                if int(fresh):
                    await self._rejoin(room)
        slices = parts * USER_SLICES
        due = [
            (room, holder, stream_id)
            for room, held in list(self._held.items())
            for stream_id, holder in list(held.items())
            if stream_id % slices == tick % slices
        ]
        expiry = _now_ms() + self.user_ttl_ms
        for start in range(0, len(due), REFRESH_BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for room, holder, stream_id in due[start : start + REFRESH_BATCH]:
                entry = {self.user_member(room, stream_id): expiry}
                pipe.zadd(streams_key(holder.user_id), entry, xx=True)
                pipe.zadd(address_streams_key(holder.address), entry, xx=True)
            await pipe.execute()

    async def _rejoin(self, room: str, but: int | None = None) -> None:
        """Join again the connections a sweep dropped while this worker stalled."""
        pairs = [
            value
            for stream_id, holder in list(self._held.get(room, {}).items())
            if stream_id != but
            for value in self._pair(holder, stream_id)
        ]
        if pairs:
            ((_, swept),) = await scripts.run(
                self.redis,
                (self._join, room_keys(room, self.worker_token), [*self._room_args(room), *pairs]),
            )
            await self._free(room, swept)

    async def _free(self, room: str, swept: list[str]) -> None:
        """Free the stream slots of the dead workers' connections a sweep dropped."""
        if not swept:
            return
        pipe = self.redis.pipeline(transaction=False)
        for worker, conn in zip(swept[::2], swept[1::2], strict=True):
            user_id, stream_id, address = str(conn).split("|", 2)
            entry = self.user_member(room, int(stream_id), str(worker))
            pipe.zrem(streams_key(user_id), entry)
            pipe.zrem(address_streams_key(address), entry)
        await pipe.execute()

    async def presence(
        self, rooms: list[str], list_max: int
    ) -> dict[str, tuple[Online | None, int]]:
        """Each room's online users sorted by name (None above ``list_max``) and their count."""
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.zcard(users_key(room))
            pipe.zrange(users_key(room), 0, list_max)
        replies = await pipe.execute()
        counts = {room: int(replies[2 * i]) for i, room in enumerate(rooms)}
        listed = {
            room: [str(u) for u in replies[2 * i + 1]]
            for i, room in enumerate(rooms)
            if counts[room] <= list_max
        }
        names = await self._names({u for users in listed.values() for u in users})
        result: dict[str, tuple[Online | None, int]] = {}
        for room in rooms:
            users = listed.get(room)
            online = None if users is None else _by_name(users, names)
            result[room] = (online, counts[room])
        return result

    async def online_page(self, room: str, limit: int, after: str | None) -> tuple[Online, int]:
        """A page of the room's online users in user id order, and how many there are."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrangebylex(users_key(room), f"({after}" if after else "-", "+", 0, limit)
        pipe.zcard(users_key(room))
        users, count = await pipe.execute()
        users = [str(u) for u in users]
        names = await self._names(set(users))
        return [{"user_id": u, "name": names.get(u) or u} for u in users], int(count)

    async def _names(self, user_ids: set[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        ordered = sorted(user_ids)
        # GETs in a pipeline rather than one MGET: each user's key has its
        # own hash tag, so on a Redis Cluster they live on different nodes
        # (the pipeline sends each node its share).
        pipe = self.redis.pipeline(transaction=False)
        for user_id in ordered:
            pipe.get(name_key(user_id))
        values = await pipe.execute()
        return {u: str(v) for u, v in zip(ordered, values, strict=True) if v is not None}

    async def name(self, user_id: str) -> str | None:
        value = await self.redis.get(name_key(user_id))
        return None if value is None else str(value)

    async def set_name(self, user_id: str, name: str, *, ttl_s: int | None = None) -> None:
        """Keep the new name (as long as the session, ``ttl_s`` when it is new),
        and tell every room the user is online in to re-read presence."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(name_key(user_id), name, ex=ttl_s or self.name_ttl_s)
        pipe.zrangebyscore(streams_key(user_id), _now_ms(), "+inf")
        _, members = await pipe.execute()
        rooms = {str(m).rsplit("|", 1)[1] for m in members if "|" in str(m)}
        if rooms:
            pipe = self.redis.pipeline(transaction=False)
            for room in sorted(rooms):
                pipe.execute_command(scripts.publish_command(self.redis), channel(room), "p")
            await pipe.execute()


def _by_name(user_ids: list[str], names: dict[str, str]) -> Online:
    online = [{"user_id": u, "name": names.get(u) or u} for u in user_ids]
    online.sort(key=lambda user: (user["name"].lower(), user["user_id"]))
    return online
