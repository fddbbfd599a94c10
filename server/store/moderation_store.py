"""Bans, memberships, and disconnects, as Redis keeps and carries them.

A user's bans live in one hash under the user's hash tag
(:func:`~server.store.keys.bans_key`), read with the budgets a request is
charged (no round trip of their own); the hash expires with its last ban.
A room's memberships live under the room's hash tag.

A disconnect is published on the channel of each room the user is online
in (the rooms of its entries in :func:`~server.store.keys.user_connections_key`),
as a sign-out is: every worker holding a stream of the user in that room
hears it, and on a Redis Cluster each room's channel is a shard channel in
its room's slot, so no node carries them all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from . import scripts
from .batch import Batch, Reply
from .batch import run as run_scripts
from .keys import DISCONNECT_PREFIX, bans_key, channel, members_key, user_connections_key

EVERYWHERE = "*"  # the bans hash's field for a ban in every room

# KEYS[1]: the user's bans. ARGV: the expiry (ms, 0: never), the reason,
# then the fields (rooms, or "*"). The hash lives as long as its longest ban.
_BAN_SCRIPT = """
for i = 3, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. '|' .. ARGV[2])
end
local last = 0
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  local expiry = tonumber(string.match(value, '^(%d+)')) or 0
  if expiry == 0 then
    redis.call('PERSIST', KEYS[1])
    return 1
  end
  if expiry > last then last = expiry end
end
redis.call('PEXPIREAT', KEYS[1], last)
return 1
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _in_force(values: list[Any]) -> bool:
    now = _now_ms()
    for value in values:
        if value is None:
            continue
        expiry = str(value).partition("|")[0]
        if not expiry.isdigit() or int(expiry) == 0 or int(expiry) > now:
            return True
    return False


def banned(batch: Batch, user_id: str, room: str | None) -> Reply[bool]:
    """Whether a ban (everywhere, or in ``room``) holds the user, read in ``batch``."""
    fields = [EVERYWHERE] if room is None else [EVERYWHERE, room]
    key = bans_key(user_id)
    return batch.commands(lambda pipe: pipe.hmget(key, fields), lambda r: _in_force(r[0]))


async def is_banned(redis: aioredis.Redis, user_id: str, room: str | None = None) -> bool:
    """:func:`banned`, in a round trip of its own."""
    batch = Batch(redis)
    reply = banned(batch, user_id, room)
    await batch.run()
    return reply.value


async def membership(redis: aioredis.Redis, room: str, user_id: str) -> str | None:
    """The role a membership gives the user in ``room``, or None."""
    role = await redis.hget(members_key(room), user_id)
    return None if role is None else str(role)


class ModerationStore:
    """Bans, memberships and disconnects in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._ban = scripts.register(redis, _BAN_SCRIPT)

    async def ban(
        self, user_id: str, rooms: Iterable[str] | None, for_s: float | None, reason: str
    ) -> None:
        expiry = 0 if for_s is None else _now_ms() + max(1, int(for_s * 1000))
        fields = [EVERYWHERE] if rooms is None else sorted(set(rooms))
        if fields:
            await run_scripts(
                self.redis, (self._ban, [bans_key(user_id)], [expiry, reason, *fields])
            )

    async def unban(self, user_id: str, rooms: Iterable[str] | None) -> None:
        if rooms is None:
            await self.redis.delete(bans_key(user_id))
        elif fields := sorted(set(rooms)):
            await self.redis.hdel(bans_key(user_id), *fields)

    async def grant(self, room: str, user_id: str, role: str) -> None:
        await self.redis.hset(members_key(room), user_id, role)

    async def revoke(self, room: str, user_id: str) -> None:
        await self.redis.hdel(members_key(room), user_id)

    async def disconnect(self, user_id: str, reason: str, rooms: Iterable[str] | None) -> None:
        """Tell every room the user is online in (of ``rooms``, when given)
        that its streams there end, for ``reason``, on every worker."""
        await tell_user_rooms(self.redis, user_id, f"{DISCONNECT_PREFIX}{reason}\n{user_id}", rooms)


def rooms_of(members: Iterable[Any]) -> set[str]:
    """The rooms of a user's connection entries (``worker:id|room``)."""
    return {str(m).rsplit("|", 1)[1] for m in members if "|" in str(m)}


async def publish_to_rooms(redis: aioredis.Redis, rooms: Iterable[str], data: str) -> None:
    """Publish ``data`` on each room's channel, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    command = scripts.publish_command(redis)
    for room in sorted(rooms):
        pipe.execute_command(command, channel(room), data)
    if len(pipe):
        await pipe.execute()


async def tell_user_rooms(
    redis: aioredis.Redis, user_id: str, data: str, rooms: Iterable[str] | None = None
) -> None:
    """Publish ``data`` on the channels of the rooms the user is online in
    (those of ``rooms``, when given): every worker holding its connections there hears it."""
    members = await redis.zrangebyscore(user_connections_key(user_id), _now_ms(), "+inf")
    online = rooms_of(members)
    if rooms is not None:
        online &= set(rooms)
    await publish_to_rooms(redis, online, data)
