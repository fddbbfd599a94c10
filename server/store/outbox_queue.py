"""The webhook outbox, delivering side: finding rooms with events, holding a
room while its events are delivered (taken a batch at a time, sent one at
a time, dropped together), and letting go.

A room is delivered by one worker at a time, which holds a lease on it: its
``owner`` key (in the room's slot, with an expiry) names the worker's
token. Every step that changes the outbox checks the lease in the same
script (a worker that lost its lease changes nothing), and renews it.

Finding rooms: a room with events is in one of the due sets
(:mod:`server.store.due_rooms`), scored by when it is due (0: now).
Claiming takes due rooms and, in the same step, moves them a lease ahead,
so that other workers leave them alone while this one takes the room's
lease; if it dies before letting go, the
room comes due again when that runs out, and another worker takes over. A
room stays in its due set while it is held, and leaves it only when it was
found empty: first the mark goes, then the emptiness is checked with the
lease in one script, so that an event written in between is either seen
then or marks the room again after. A failed delivery moves the room's mark
to its next try and lets go of the lease.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..core.webhook import event_id
from .batch import run as run_scripts
from .due_rooms import DueRooms
from .keys import outbox_key, outbox_owner_key, outbox_tries_key

KEEP_EMPTY_MS = 86_400_000  # an emptied outbox is kept this long, so its ids never repeat
# Events taken from a room at once: sent one at a time, in order, and
# dropped from the outbox together once delivered (one round trip for them all).
BATCH = 16

# Shared by the room scripts. KEYS: the outbox, its owner, its tries.
# ARGV[1]: the worker's token, ARGV[2]: the lease (ms), ARGV[3]: how many
# events to return at most.
_HEAD = """
local function head()
  local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[3])
  local out = {}
  for i, entry in ipairs(entries) do
    local tries = redis.call('HGET', KEYS[3], entry[1]) or '0'
    out[i] = {entry[1], entry[2], tries}
  end
  return out
end
local function mine()
  return redis.call('GET', KEYS[2]) == ARGV[1]
end
"""

# Take the room's lease (or keep it), and return its first events: false
# when another worker holds the room.
_TAKE = (
    _HEAD
    + """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return false end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return head()
"""
)

# ARGV[4]: "last" once the room left its due set, ARGV[5]: how long an
# emptied outbox is kept (ms), ARGV[6...]: events delivered (or buried).
# Drop them and renew the lease, then return the room's next events; or,
# when it has none and its mark went ("last"), let go of the room and
# return {}. False when the lease was lost.
_DONE = (
    _HEAD
    + """
if not mine() then return false end
if #ARGV > 5 then
  local ids = {unpack(ARGV, 6)}
  redis.call('XDEL', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
end
local next = head()
if next[1] or ARGV[4] ~= 'last' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return next
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {}
"""
)

# ARGV[3]: an event that failed, ARGV[4]: its failures so far, ARGV[5...]:
# the events delivered before it (dropped). Keep the count and let go of
# the room (1), or 0 when the lease was lost.
_FAILED = (
    _HEAD
    + """
if not mine() then return 0 end
if #ARGV > 4 then
  local ids = {unpack(ARGV, 5)}
  redis.call('XDEL', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('DEL', KEYS[2])
return 1
"""
)

# Renew the lease (1), or 0 when it was lost.
_RENEW = (
    _HEAD
    + """
if not mine() then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
)

# Let go of the room if it is still ours.
_RELEASE = (
    _HEAD
    + """
if mine() then redis.call('DEL', KEYS[2]) end
return 0
"""
)


class LeaseLost(Exception):
    """Another worker took the room over: this one must leave it alone."""


@dataclass(frozen=True)
class Entry:
    """An event in a room's outbox, with the failed deliveries it had."""

    room: str
    entry_id: str
    fields: dict[str, str]
    tries: int

    @property
    def id(self) -> str:
        return self.fields.get("id") or event_id(self.room, self.entry_id)

    @property
    def kind(self) -> str:
        return self.fields.get("type", "")

    @property
    def created(self) -> float:
        return _number(self.fields.get("at"))

    @property
    def since(self) -> float:
        """When its retries began (its creation, or its replay)."""
        return _number(self.fields.get("since")) or self.created


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _entries(room: str, reply: list[list[object]]) -> list[Entry]:
    entries = []
    for entry_id, flat, tries in reply:
        assert isinstance(flat, list)
        fields = {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
        entries.append(Entry(room, str(entry_id), fields, int(str(tries))))
    return entries


class OutboxQueue:
    """The scripts by which workers share the delivery of every room's events."""

    def __init__(self, redis: aioredis.Redis, *, lease_ms: int) -> None:
        self.redis = redis
        self.lease_ms = lease_ms
        self._take = redis.register_script(_TAKE)
        self._done = redis.register_script(_DONE)
        self._failed = redis.register_script(_FAILED)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.due = DueRooms(redis)

    @staticmethod
    def _keys(room: str) -> list[str]:
        return [outbox_key(room), outbox_owner_key(room), outbox_tries_key(room)]

    async def take(self, room: str, token: str) -> list[Entry] | None:
        """Take the room: None when another worker has it, else its first
        :data:`BATCH` events (none: it has none)."""
        reply = await self._take(keys=self._keys(room), args=[token, self.lease_ms, BATCH])
        return None if reply is None else _entries(room, reply)

    async def done(
        self, room: str, token: str, delivered: list[Entry], *, last: bool
    ) -> list[Entry]:
        """``delivered`` were delivered (or buried): the room's next events.
        ``last``: the events taken were all the room had, so the room may be
        let go of: it leaves its due set first, and then, found empty, is let
        go of (an empty list); events that came meanwhile are returned
        instead, and the room is due again."""
        if last:
            await self.due.done(room)
        args: list[str | int] = [token, self.lease_ms, BATCH, "last" if last else "", KEEP_EMPTY_MS]
        args += [entry.entry_id for entry in delivered]
        reply = await self._done(keys=self._keys(room), args=args)
        if reply is None:
            raise LeaseLost(room)
        entries = _entries(room, reply)
        if last and entries:
            await self.due.due_now([room], added=True)
        return entries

    async def failed(
        self, token: str, entry: Entry, delay_s: float, delivered: list[Entry]
    ) -> None:
        """``entry`` failed once more (``delivered``, taken before it, were
        delivered): try again in ``delay_s``; the room is let go of."""
        room = entry.room
        await self.due.due_in(room, int(delay_s * 1000))
        args: list[str | int] = [token, self.lease_ms, entry.entry_id, entry.tries + 1]
        args += [done.entry_id for done in delivered]
        if not await self._failed(keys=self._keys(room), args=args):
            raise LeaseLost(room)

    async def renew(self, held: dict[str, str]) -> list[str]:
        """Renew the lease on each held room (room -> token); the rooms whose
        lease was lost.

        The rooms' due marks are left alone: a serve may have ended since
        ``held`` was read, and a write made its room due at once; moving the
        mark a lease ahead then would hold that write back a whole lease.
        (A room held past its claim is claimed again, and its take finds
        the lease: it costs a round trip or two per lease, nothing more.)"""
        if not held:
            return []
        calls = [
            (self._renew, self._keys(room), [token, self.lease_ms]) for room, token in held.items()
        ]
        replies = await run_scripts(self.redis, *calls)
        return [room for room, renewed in zip(held, replies, strict=True) if not renewed]

    async def release(self, held: dict[str, str]) -> None:
        """Let go of held rooms (a stop): they are due at once, for the next worker."""
        if not held:
            return
        await self.due.due_now(held)
        calls = [(self._release, self._keys(room), [token]) for room, token in held.items()]
        await run_scripts(self.redis, *calls)
