"""Open connections as Redis sees them: room presence and the per-session stream limit.

Per room, three keys share the room's hash tag:

- ``conns``: a sorted set of the room's open connections (``user|worker:id``),
  scored by expiry; the worker that holds a connection refreshes it every
  heartbeat, so those of a worker that died expire after two intervals;
- ``counts``: a hash of how many connections each user has in the room;
- ``users``: the room's online users, a sorted set with every score 0 so that
  it pages in user id order (``ZRANGEBYLEX``).

A script keeps the three in step. When a user comes online in a room (their
first connection) or goes offline (their last), it publishes a presence
notice on the room's channel, so that every worker with clients in the room
re-reads the room's presence, once per short batch. Joins and leaves cost a
constant number of commands however big the room. A rename publishes the
same notice in every room the user is online in.

The per-session stream limit counts a user's connections in a sorted set of
their own (members name the room), scored by expiry in the same way.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

from .broker import channel

# KEYS: the user's streams and name (one slot: both carry the user's tag).
# Drop expired entries, refuse when the user is at the limit, else register
# the stream and keep the user's display name for presence. Entries expire
# by their scores; the key lives as long as a session, so that a heartbeat
# refreshes a stream with a single ZADD.
_OPEN_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[6])
return 1
"""

# KEYS: conns, counts, users. ARGV: expiry (ms), channel, then pairs of
# (connection, user) to add or refresh; with ARGV[3] == 'sweep' first drops
# connections that expired before ARGV[4] and starts the pairs at ARGV[5].
# A connection that was not there (new, or swept while its worker stalled)
# counts for its user again.
_JOIN_SCRIPT = """
local changed = false
local first = 3
if ARGV[3] == 'sweep' then
  first = 5
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
  for _, conn in ipairs(dead) do
    local user = string.match(conn, '^([^|]*)')
    redis.call('ZREM', KEYS[1], conn)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('ZREM', KEYS[3], user)
      changed = true
    end
  end
end
for i = first, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1) == 1 then
      redis.call('ZADD', KEYS[3], 0, ARGV[i + 1])
      changed = true
    end
  end
end
for i = 1, 3 do
  redis.call('PEXPIREAT', KEYS[i], ARGV[1])
end
if changed then
  redis.call('PUBLISH', ARGV[2], 'p')
end
return changed and 1 or 0
"""

# KEYS: conns, counts, users. ARGV: connection, user, channel.
_LEAVE_SCRIPT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    redis.call('ZREM', KEYS[3], ARGV[2])
    redis.call('PUBLISH', ARGV[3], 'p')
    return 1
  end
end
return 0
"""


REFRESH_BATCH = 250  # connections refreshed per pipeline


def room_keys(room: str) -> list[str]:
    return [f"chat:{{{room}}}:conns", f"chat:{{{room}}}:counts", f"chat:{{{room}}}:users"]


def users_key(room: str) -> str:
    return room_keys(room)[2]


def streams_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:streams"


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
        name_ttl_s: int,
    ) -> None:
        self.redis = redis
        self.worker_token = worker_token
        self.ttl_ms = int(ttl_s * 1000)
        self.per_session_limit = per_session_limit
        self.name_ttl_s = name_ttl_s
        self._open = redis.register_script(_OPEN_SCRIPT)
        self._join = redis.register_script(_JOIN_SCRIPT)
        self._leave = redis.register_script(_LEAVE_SCRIPT)

    def member(self, user_id: str, stream_id: int) -> str:
        """A connection in its room's set: whose it is comes first."""
        return f"{user_id}|{self.worker_token}:{stream_id}"

    def user_member(self, room: str, stream_id: int) -> str:
        """A connection in its user's set: where it is comes last (see :meth:`set_name`)."""
        return f"{self.worker_token}:{stream_id}|{room}"

    async def open(self, room: str, user_id: str, name: str, stream_id: int) -> bool:
        """Register a connection; False when the user already has the most allowed."""
        now = _now_ms()
        expiry = now + self.ttl_ms
        member = self.member(user_id, stream_id)
        allowed = await self._open(
            keys=[streams_key(user_id), name_key(user_id)],
            args=[
                now,
                expiry,
                self.per_session_limit,
                self.user_member(room, stream_id),
                name,
                self.name_ttl_s,
            ],
        )
        if not allowed:
            return False
        await self._join(keys=room_keys(room), args=[expiry, channel(room), member, user_id])
        return True

    async def close(self, room: str, user_id: str, stream_id: int) -> None:
        member = self.member(user_id, stream_id)
        pipe = self.redis.pipeline(transaction=False)
        await self._leave(keys=room_keys(room), args=[member, user_id, channel(room)], client=pipe)
        pipe.zrem(streams_key(user_id), self.user_member(room, stream_id))
        await pipe.execute()

    async def refresh(self, streams: Iterable[tuple[str, str, int]]) -> None:
        """Extend the (room, user_id, stream_id) connections this worker holds.

        Also sweeps each room of connections that expired (their worker died),
        which publishes a presence notice when someone went offline.
        """
        streams = list(streams)
        # In batches: packing one pipeline of tens of thousands of commands
        # would hold the event loop for hundreds of milliseconds.
        for start in range(0, len(streams), REFRESH_BATCH):
            await self._refresh(streams[start : start + REFRESH_BATCH])

    async def _refresh(self, streams: list[tuple[str, str, int]]) -> None:
        now = _now_ms()
        expiry = now + self.ttl_ms
        by_room: dict[str, list[str]] = collections.defaultdict(list)
        by_user: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for room, user_id, stream_id in streams:
            member = self.member(user_id, stream_id)
            by_room[room] += (member, user_id)
            by_user[streams_key(user_id)][self.user_member(room, stream_id)] = expiry
        if not by_room:
            return
        pipe = self.redis.pipeline(transaction=False)
        for room, pairs in by_room.items():
            await self._join(
                keys=room_keys(room),
                args=[expiry, channel(room), "sweep", now, *pairs],
                client=pipe,
            )
        for key, members in by_user.items():
            pipe.zadd(key, members)
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
        values = await self.redis.mget([name_key(u) for u in ordered])
        return {u: str(v) for u, v in zip(ordered, values, strict=True) if v is not None}

    async def name(self, user_id: str) -> str | None:
        value = await self.redis.get(name_key(user_id))
        return None if value is None else str(value)

    async def set_name(self, user_id: str, name: str) -> None:
        """Keep the new name, and tell every room the user is online in to re-read presence."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(name_key(user_id), name, ex=self.name_ttl_s)
        pipe.zrangebyscore(streams_key(user_id), _now_ms(), "+inf")
        _, members = await pipe.execute()
        rooms = {str(m).rsplit("|", 1)[1] for m in members if "|" in str(m)}
        if rooms:
            pipe = self.redis.pipeline(transaction=False)
            for room in sorted(rooms):
                pipe.publish(channel(room), "p")
            await pipe.execute()


def _by_name(user_ids: list[str], names: dict[str, str]) -> Online:
    online = [{"user_id": u, "name": names.get(u) or u} for u in user_ids]
    online.sort(key=lambda user: (user["name"].lower(), user["user_id"]))
    return online
