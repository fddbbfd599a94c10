"""Read positions and unread counts: how far each user has read in its rooms.

A user's rooms live under the user's hash tag, in two keys that go
together: a sorted set of room to the user's last activity there (ms: a
message posted, or a read position set) and a hash of room to the id of
the last message read. A message the user posts is read up to: its own
messages are never unread. Both keys are capped at the user's
:data:`ROOMS_MAX` most recent rooms (the oldest are trimmed) and expire
``ttl_s`` after the user's last activity.

Positions only move forward: a mark older than the kept position changes
nothing. Ids are compared in the script as numbers of any length (as
strings: a Lua number holds 53 bits, an id's parts 64).

Unread counts are read per room in the room's slot (one script each, all
in one pipeline): the messages by others after the position, up to
:data:`UNREAD_MAX` + 1, reading at most :data:`UNREAD_SCAN` entries, so
that the cost of a list never grows with a room's history. Edits,
deletions, deleted messages and the user's own messages are not counted.
The same script gives the room's newest message with its latest text
(looking back at most :data:`LAST_SCAN` entries).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..core.model import Message
from . import failures, scripts
from .batch import Batch, Reply
from .history import FOLD
from .keys import changes_key, read_positions_key, stream_key, user_rooms_key

log = logging.getLogger(__name__)

ROOMS_MAX = 100  # rooms kept per user, and listed
# What the publish script takes to read a room up to the message it stores:
# the user's keys, and its arguments (see ReadMarks.with_publish).
ReadMark = tuple[list[str], list[Any]]
UNREAD_MAX = 100  # unread counts stop here ("100+" beyond)
UNREAD_SCAN = 1000  # entries a count reads at most (a lower bound past them)
LAST_SCAN = 200  # entries read back, at most, for a room's newest message

# mark_read(rooms, positions, room, position, now, ttl, most): in the
# user's rooms (a sorted set) and read positions (a hash), moves the room's
# position forward to ``position`` (never back) and its activity to ``now``
# (ms); trims the oldest rooms past ``most``; both keys then live ``ttl``
# seconds. Returns the position kept. (Also run by the publish script on one
# Redis: see server.store.publish.)
MARK_LUA = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end
local function mark_read(rooms, positions, room, position, now, ttl, most)
  local kept = redis.call('HGET', positions, room)
  if not kept or older(kept, position) then
    redis.call('HSET', positions, room, position)
    kept = position
  end
  redis.call('ZADD', rooms, now, room)
  local over = redis.call('ZCARD', rooms) - tonumber(most)
  if over > 0 then
    local gone = redis.call('ZRANGE', rooms, 0, over - 1)
    redis.call('ZREMRANGEBYRANK', rooms, 0, over - 1)
    redis.call('HDEL', positions, unpack(gone))
  end
  redis.call('EXPIRE', rooms, ttl)
  redis.call('EXPIRE', positions, ttl)
  return kept
end
"""
# KEYS: the user's rooms and read positions. ARGV: the room, the position
# (an id), now (ms), the keys' lifetime (s), the most rooms kept.
_MARK_SCRIPT = (
    MARK_LUA + "return mark_read(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])"
)

# KEYS[1]: the room's stream, KEYS[2]: its changes hash. ARGV: [1] the read
# position ('0-0': none), [2] the user, [3] the most counted, [4] the most
# entries read for the count, [5] the most read back for the newest
# message. Returns 0 when the stream is gone, else {unread, newest message
# (as history gives it) or 0}.
_STATE_SCRIPT = (
    FOLD
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local newest = 0
local bound, read = '+', 0
local budget = tonumber(ARGV[5])
while newest == 0 and read < budget do
  local chunk = math.min(50, budget - read)
  local entries = redis.call('XREVRANGE', KEYS[1], bound, '-', 'COUNT', chunk)
  for i = 1, #entries do
    local entry = fold(entries[i])
    if entry then newest = entry break end
  end
  read = read + #entries
  if #entries < chunk then break end
  bound = '(' .. entries[#entries][1]
end
local most, scan = tonumber(ARGV[3]) + 1, tonumber(ARGV[4])
local unread, after = 0, ARGV[1]
read = 0
while unread < most and read < scan do
  local chunk = math.min(most, scan - read)
  local entries = redis.call('XRANGE', KEYS[1], '(' .. after, '+', 'COUNT', chunk)
  for i = 1, #entries do
    local entry = entries[i]
    if entry[2][1] ~= 'k' and fold(entry) then
      local author
      for j = 1, #entry[2], 2 do
        if entry[2][j] == 'u' then author = entry[2][j + 1] end
      end
      if author ~= ARGV[2] then
        unread = unread + 1
        if unread == most then break end
      end
    end
  end
  read = read + #entries
  if #entries < chunk then break end
  after = entries[#entries][1]
end
return {unread, newest}
"""
)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomState:
    """One of a user's rooms as its list shows it."""

    room: str
    active_ms: int  # the user's last activity there
    last_message: Message | None
    unread: int  # up to UNREAD_MAX + 1

    @property
    def newest_ms(self) -> int:
        """When the room last moved: its newest message, or the user's activity."""
        posted = int(self.last_message.id.split("-", 1)[0]) if self.last_message else 0
        return max(posted, self.active_ms)


class ReadMarks:
    """The users' rooms and read positions, in Redis."""

    __slots__ = (
        "_mark",
        "_state",
        "anonymous_ttl_s",
        "cluster",
        "new_ttl_s",
        "redis",
        "signed_in_ttl_s",
    )

    def __init__(
        self, redis: aioredis.Redis, *, anonymous_ttl_s: int, new_ttl_s: int, signed_in_ttl_s: int
    ) -> None:
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        # An anonymous user lasts as long as its session: one nobody used
        # again yet lives new_ttl_s.
        self.anonymous_ttl_s = anonymous_ttl_s
        self.new_ttl_s = new_ttl_s
        self.signed_in_ttl_s = signed_in_ttl_s
        self._mark = redis.register_script(_MARK_SCRIPT)
        self._state = scripts.register(redis, _STATE_SCRIPT)

    def mark(
        self,
        batch: Batch,
        user_id: str,
        room: str,
        position: str,
        *,
        signed_in: bool,
        new: bool = False,
    ) -> Reply[str]:
        """Read up to ``position`` (a formatted id) in ``room``, in ``batch``:
        the position kept (this one, or a newer one kept before). ``new``:
        the user's session was just made."""
        keys = [user_rooms_key(user_id), read_positions_key(user_id)]
        args = [room, position, int(time.time() * 1000), self._ttl_s(signed_in, new), ROOMS_MAX]
        return batch.scripts([(self._mark, keys, args)], lambda replies: str(replies[0]))

    def with_publish(
        self, user_id: str, room: str, *, signed_in: bool, new: bool, backend: bool
    ) -> ReadMark | None:
        """What the publish script needs to read the room up to the message
        it stores (its keys, and the room, now, the lifetime and the most
        rooms): on one Redis, where a script may touch the user's keys and
        the room's, this spares :meth:`posted` its round trip. None on a
        cluster, where they are in different slots, and for the ``backend``
        (nothing to mark, as in :meth:`posted`)."""
        if self.cluster or backend:
            return None
        keys = [user_rooms_key(user_id), read_positions_key(user_id)]
        return keys, [room, int(time.time() * 1000), self._ttl_s(signed_in, new), ROOMS_MAX]

    def _ttl_s(self, signed_in: bool, new: bool) -> int:
        ttl_s = self.signed_in_ttl_s if signed_in else self.anonymous_ttl_s
        return min(ttl_s, self.new_ttl_s) if new else ttl_s

    async def posted(
        self, user_id: str, message: Message, signed_in: bool, *, new: bool, backend: bool
    ) -> None:
        """The user posted ``message``: its room is read up to it (not when
        the application's ``backend`` posted it as the user).

        One round trip after the publish: the message's id is known only
        then, and the user's keys are in another slot than the room's (a
        Redis Cluster runs no script across both; on one Redis the publish
        script marks it instead, see :meth:`with_publish`). The message is
        stored whatever happens here."""
        if backend:
            return
        batch = Batch(self.redis)
        self.mark(batch, user_id, message.room, message.id, signed_in=signed_in, new=new)
        try:
            await batch.run()
        except failures.FAILURES as exc:
            log.warning("the room list of %s was not updated: %s", user_id, exc)

    async def rooms(self, user_id: str) -> list[tuple[str, int, str]]:
        """The user's rooms, the most recently active first: (room, activity
        in ms, read position)."""
        batch = Batch(self.redis)
        listed = batch.commands(
            lambda pipe: pipe.zrevrange(user_rooms_key(user_id), 0, ROOMS_MAX - 1, withscores=True),
            lambda replies: [(str(room), int(score)) for room, score in replies[0]],
        )
        positions = batch.commands(
            lambda pipe: pipe.hgetall(read_positions_key(user_id)),
            lambda replies: {str(k): str(v) for k, v in replies[0].items()},
        )
        await batch.run()
        return [(room, ms, positions.value.get(room, "0-0")) for room, ms in listed.value]

    async def states(self, user_id: str, rooms: list[tuple[str, int, str]]) -> list[RoomState]:
        """Each room's newest message and unread count (one round trip); rooms
        whose history is gone are left out."""
        if not rooms:
            return []
        calls: list[Any] = [
            (
                self._state,
                [stream_key(room), changes_key(room)],
                [position, user_id, UNREAD_MAX, UNREAD_SCAN, LAST_SCAN],
            )
            for room, _, position in rooms
        ]
        batch = Batch(self.redis)
        replies = batch.scripts(calls, list)
        await batch.run()
        found = []
        for (room, active_ms, _), reply in zip(rooms, replies.value, strict=True):
            if not reply:
                continue  # (expired: the room's history is gone)
            unread, newest = reply
            message = None
            if newest:
                entry_id, fields = newest
                pairs = dict(zip(fields[::2], fields[1::2], strict=True))
                message = Message.from_fields(room, str(entry_id), pairs)
            found.append(RoomState(room, active_ms, message, int(unread)))
        return found
