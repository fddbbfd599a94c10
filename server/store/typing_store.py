"""Typing notices in Redis: one short-lived key per room and user, and a publish.

A notice is published on the room's channel (``t\\n<user id>\\n<name>``) only
when the user's key in the room could be set (``SET NX PX``): the key is the
one place every worker of every instance agrees on, so two workers never
both send a notice of the same user within the window. Nothing else is
written: a notice is not kept in the room's stream, and it is never replayed.

Rooms over ``presence_list_max`` (whose clients get presence counts only)
get no notices at all: the script reads the room's online count first.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from . import scripts
from .batch import run
from .keys import TYPING_PREFIX, channel, typing_key, users_key

# KEYS[1]: the user's typing key in the room, KEYS[2]: the room's online
# users. ARGV[1]: the window (ms), ARGV[2]: presence_list_max, ARGV[3]: the
# channel, ARGV[4]: the notice. Returns 0 when the notice was published,
# else the ms until one may be (-1: the room is too big for notices).
_NOTIFY_SCRIPT = """
if redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[2]) then
  return -1
end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 0
end
return math.max(redis.call('PTTL', KEYS[1]), 1)
"""


def notice(user_id: str, name: str) -> str:
    """What a typing notice carries on the room's channel."""
    return f"{TYPING_PREFIX}{user_id}\n{name}"


def parse_notice(data: str) -> tuple[str, str] | None:
    """The user id and name of a notice from the channel; None if it is not one."""
    if not data.startswith(TYPING_PREFIX):
        return None
    user_id, newline, name = data[len(TYPING_PREFIX) :].partition("\n")
    return (user_id, name) if newline and user_id else None


class TypingStore:
    """Publishes typing notices, at most one per user per room per window."""

    def __init__(self, redis: aioredis.Redis, *, window_ms: int, list_max: int) -> None:
        self.redis = redis
        self.window_ms = window_ms
        self.list_max = list_max
        self._notify = scripts.register(redis, _NOTIFY_SCRIPT)

    async def notify(self, room: str, user_id: str, name: str) -> int:
        """Publish the user's notice in the room unless one was within the
        window: 0 when published, else how many ms until one may be (-1 when
        the room only counts its users)."""
        keys = [typing_key(room, user_id), users_key(room)]
        args = [self.window_ms, self.list_max, channel(room), notice(user_id, name)]
        (reply,) = await run(self.redis, (self._notify, keys, args))
        return int(reply)
