"""Who is online in each room, kept in Redis by the workers that hold the connections.

Per room, these keys share the room's hash tag (see :mod:`server.store.keys`):

- ``counts``: a hash of how many connections each user has in the room;
- ``users``: the room's online users, a sorted set with every score 0 so that
  it pages in user id order (``ZRANGEBYLEX``);
- ``leases``: the workers holding connections in the room, each scored by
  when its lease runs out;
- ``held:<worker>``: a set of the connections (``user|id|address``) that
  worker holds in the room.

A worker renews its lease on each room it holds connections in once per
heartbeat: one command per room, however many connections. Whoever joins
the room or renews a lease first sweeps the connections of workers whose
lease ran out (they died, or stalled for two heartbeats); a worker whose
lease was swept while it stalled joins its connections again.

Scripts keep the keys in step. When a user comes online in a room (their
first connection) or goes offline (their last), the script publishes a
presence notice on the room's channel, so that every worker with clients in
the room re-reads the room's presence, once per short batch (see
:mod:`server.core.presence`). Joins and leaves cost a constant number of
commands however big the room. Display names are kept per user, beside.
"""

from __future__ import annotations

from typing import NamedTuple

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from ..core.model import Online
from ..core.webhook import USER_JOINED, USER_LEFT
from . import scripts
from .batch import Call
from .keys import channel, held_prefix, name_key, room_keys, users_key
from .outbox import OUTBOX_LUA, Outbox

# Shared by the room scripts. KEYS: counts, users, leases, this worker's held
# set. ARGV[1]: lease (ms), ARGV[2]: this worker, ARGV[3]: the channel,
# ARGV[4]: the prefix of held sets. The sweep drops the connections of every
# other worker whose lease ran out and returns them as {worker, 'user|id', ...}
# so that the caller can free their users' connection slots. (Held sets are named
# from the room's tag: every key a script touches is in the room's slot.)
#
# Webhooks: ARGV[5] holds 'j' to write user.joined events, 'l' user.left
# ('' for neither), ARGV[6] is the room; KEYS[5] (and KEYS[6] on one Redis
# server) are then the outbox keys (see server.store.outbox).
_ROOM_PRELUDE = (
    OUTBOX_LUA
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local changed = false
local function tell(flag, kind, user)
  if string.find(ARGV[5], flag, 1, true) then
    local data = '{"room":' .. cjson.encode(ARGV[6]) .. ',"user_id":' .. cjson.encode(user) .. '}'
    outbox_write(KEYS[5], KEYS[6], ARGV[6], kind, data, string.format('%.3f', now / 1000))
  end
end
local function user_of(conn)
  return string.match(conn, '^([^|]*)')
end
local function gone(user)
  if redis.call('HINCRBY', KEYS[1], user, -1) <= 0 then
    redis.call('HDEL', KEYS[1], user)
    redis.call('ZREM', KEYS[2], user)
    changed = true
    tell('l', 'user.left', user)
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
)

_EPILOGUE = """
if changed then
  redis.call('PUBLISH', ARGV[3], 'p')
end
"""

# ARGV[7...]: pairs of (connection, user) to add. The first reply is 1 when
# the lease was not there (see _RENEW_SCRIPT).
_JOIN_SCRIPT = (
    _ROOM_PRELUDE
    + """
local fresh = renew()
for i = 7, #ARGV, 2 do
  if redis.call('SADD', KEYS[4], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1) == 1 then
      redis.call('ZADD', KEYS[2], 0, ARGV[i + 1])
      changed = true
      tell('j', 'user.joined', ARGV[i + 1])
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

# ARGV[7...]: pairs of (connection, user) to take out. The last connection
# the worker holds in the room gives up its lease. The first reply is always
# 0 (a join's and a leave's replies read alike).
_LEAVE_SCRIPT = (
    _ROOM_PRELUDE
    + """
for i = 7, #ARGV, 2 do
  if redis.call('SREM', KEYS[4], ARGV[i]) == 1 then
    gone(ARGV[i + 1])
  end
end
if redis.call('SCARD', KEYS[4]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
"""
    + _EPILOGUE
    + "return {0, swept}\n"
)


class Holder(NamedTuple):
    """Whose a connection is: its user, and its client address (budget key)."""

    user_id: str
    address: str


class PresenceStore:
    """The room scripts of one worker, and the reads of presence and names."""

    def __init__(
        self, redis: aioredis.Redis, worker_token: str, ttl_ms: int, outbox: Outbox | None = None
    ) -> None:
        self.redis = redis
        self.worker_token = worker_token
        self.ttl_ms = ttl_ms
        # Which of user.joined ('j') and user.left ('l') are written, and where.
        self._hooks = "".join(
            flag
            for flag, kind in (("j", USER_JOINED), ("l", USER_LEFT))
            if outbox is not None and outbox.wants(kind)
        )
        self.outbox = outbox if self._hooks else None
        self._join = scripts.register(redis, _JOIN_SCRIPT)
        self._renew = scripts.register(redis, _RENEW_SCRIPT)
        self._leave = scripts.register(redis, _LEAVE_SCRIPT)

    @staticmethod
    def member(holder: Holder, connection_id: int) -> str:
        """A connection in its worker's held set: whose it is comes first."""
        return f"{holder.user_id}|{connection_id}|{holder.address}"

    def _call(self, script: AsyncScript, room: str, *args: str) -> Call:
        keys = room_keys(room, self.worker_token)
        if self.outbox is not None:
            keys.extend(self.outbox.keys(room))
        return (
            script,
            keys,
            [
                self.ttl_ms,
                self.worker_token,
                channel(room),
                held_prefix(room),
                self._hooks,
                room,
                *args,
            ],
        )

    async def written(self, *rooms: str) -> None:
        """After scripts of ``rooms`` ran: their user events are on their way
        (see :meth:`server.store.outbox.Outbox.written`)."""
        if self.outbox is not None and rooms:
            await self.outbox.written(*rooms)

    def join(self, room: str, held: list[tuple[Holder, int]]) -> Call:
        """The script that joins connections to the room (replies: fresh lease, swept)."""
        pairs = [v for holder, cid in held for v in (self.member(holder, cid), holder.user_id)]
        return self._call(self._join, room, *pairs)

    def leave(self, room: str, held: list[tuple[Holder, int]]) -> Call:
        """The script that takes connections out of the room (replies: 0, swept)."""
        pairs = [v for holder, cid in held for v in (self.member(holder, cid), holder.user_id)]
        return self._call(self._leave, room, *pairs)

    def renew(self, room: str) -> Call:
        """The script that renews this worker's lease (replies: fresh lease, swept)."""
        return self._call(self._renew, room)

    async def read(self, rooms: list[str], list_max: int) -> dict[str, tuple[Online | None, int]]:
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
        names = await self.names({u for users in listed.values() for u in users})
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
        names = await self.names(set(users))
        return [{"user_id": u, "name": names.get(u) or u} for u in users], int(count)

    async def names(self, user_ids: set[str]) -> dict[str, str]:
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


def _by_name(user_ids: list[str], names: dict[str, str]) -> Online:
    online = [{"user_id": u, "name": names.get(u) or u} for u in user_ids]
    online.sort(key=lambda user: (user["name"].lower(), user["user_id"]))
    return online
