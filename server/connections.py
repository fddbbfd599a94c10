"""Open streams as Redis sees them: room presence and the per-session stream limit.

Each open SSE or WebSocket stream is an entry in two sorted sets whose scores
are expiry times: the room's online set and the user's set of streams. The
worker that holds the stream refreshes its entries on every heartbeat and
removes them when the stream closes; entries of a worker that died expire
on their own after two heartbeat intervals.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

import redis.asyncio as aioredis

# Drop expired entries, refuse when the user is at the limit, else register.
_OPEN_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""


def online_key(room: str) -> str:
    return f"chat:{{{room}}}:online"


def streams_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:streams"


def name_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:name"


def _now_ms() -> int:
    return int(time.time() * 1000)


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

    def member(self, user_id: str, stream_id: int) -> str:
        return f"{user_id}|{self.worker_token}:{stream_id}"

    async def open(self, room: str, user_id: str, name: str, stream_id: int) -> bool:
        """Register a stream; False when the user already has the most allowed."""
        now = _now_ms()
        member = self.member(user_id, stream_id)
        allowed = await self._open(
            keys=[streams_key(user_id)],
            args=[now, now + self.ttl_ms, self.per_session_limit, member],
        )
        if not allowed:
            return False
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(online_key(room), {member: now + self.ttl_ms})
        pipe.pexpireat(online_key(room), now + self.ttl_ms)
        pipe.set(name_key(user_id), name, ex=self.name_ttl_s)
        await pipe.execute()
        return True

    async def close(self, room: str, user_id: str, stream_id: int) -> None:
        member = self.member(user_id, stream_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(online_key(room), member)
        pipe.zrem(streams_key(user_id), member)
        await pipe.execute()

    async def refresh(self, streams: Iterable[tuple[str, str, int]]) -> None:
        """Extend the entries of the (room, user_id, stream_id) streams this worker holds."""
        expiry = _now_ms() + self.ttl_ms
        # One ZADD and one expiry per key, however many streams share it.
        by_key: dict[str, dict[str, int]] = collections.defaultdict(dict)
        for room, user_id, stream_id in streams:
            member = self.member(user_id, stream_id)
            by_key[online_key(room)][member] = expiry
            by_key[streams_key(user_id)][member] = expiry
        if not by_key:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key, members in by_key.items():
            pipe.zadd(key, members)
            pipe.pexpireat(key, expiry)
        await pipe.execute()

    async def online(self, rooms: list[str]) -> dict[str, list[dict[str, str]]]:
        """The users with a live stream in each room, sorted by name; drops expired entries."""
        now = _now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.zremrangebyscore(online_key(room), "-inf", now)
            pipe.zrange(online_key(room), 0, -1)
        replies = await pipe.execute()
        members = {room: replies[2 * i + 1] for i, room in enumerate(rooms)}
        user_ids = sorted({str(m).split("|", 1)[0] for ms in members.values() for m in ms})
        names = (
            dict(zip(user_ids, await self.redis.mget([name_key(u) for u in user_ids]), strict=True))
            if user_ids
            else {}
        )
        result = {}
        for room, room_members in members.items():
            users = {str(m).split("|", 1)[0] for m in room_members}
            online = [{"user_id": u, "name": str(names.get(u) or u)} for u in users]
            online.sort(key=lambda user: (user["name"].lower(), user["user_id"]))
            result[room] = online
        return result

    async def name(self, user_id: str) -> str | None:
        value = await self.redis.get(name_key(user_id))
        return None if value is None else str(value)

    async def set_name(self, user_id: str, name: str) -> None:
        await self.redis.set(name_key(user_id), name, ex=self.name_ttl_s)
