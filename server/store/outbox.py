"""The webhook outbox, writing side: events are written by the script that
makes the change they report, in the same step.

Each room has an outbox, a Redis Stream in the room's slot
(:func:`~server.store.keys.outbox_key`), so that any script that touches
the room's keys may append to it, on a Redis Cluster too. An entry holds
the event's ``type``, its ``data`` (a JSON object, as text) and ``at``
(when it happened, unix seconds); one replayed from the dead letters also
keeps its ``id`` and ``since`` (when its retries start again).

For the deliverers to find the room, it is marked due in one of the sharded
due sets (:func:`~server.store.keys.due_key_of`). On one Redis server the
script marks it too (:data:`OUTBOX_LUA` with a ``due`` key), and when that
made the room due (it was not), publishes the room on
:data:`~server.store.keys.DUE_CHANNEL`, which wakes the deliverers (the
webhook deliverer of each instance, a process of its own); on a cluster
the due set lives elsewhere, so the writer marks it right after the script
(:meth:`Outbox.written`; the deliverers find it at their next look, within
half a second), and a mark lost between the two (the writer
died) is found again by the sweep (:meth:`server.store.due_rooms.DueRooms.sweep`).

To write an event from a script:

1. Prepend :data:`OUTBOX_LUA` to the script's text.
2. When :meth:`Outbox.wants` the event's kind, add :meth:`Outbox.keys` of
   the room to the script's KEYS (one or two keys: the outbox, then the due
   set when there is one) and tell the script where they start.
3. In the script: ``outbox_write(KEYS[i], KEYS[i + 1], room, kind, data, at)``
   (``KEYS[i + 1]`` is nil on a cluster, which the function expects).
4. After the script: ``await outbox.written(room)``.

With no ``webhook_url`` there is no :class:`Outbox`, and nothing of this runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .keys import DUE_CHANNEL, due_key_of, outbox_key

# outbox_write(outbox, due, room, kind, data, at, ...): append an event to
# the room's outbox (extra field pairs may follow), keep the outbox (an
# emptied one expires), and mark the room due when ``due`` is given: a room
# that was not due already is published, to wake the deliverers.
OUTBOX_LUA = f"""
local function outbox_write(outbox, due, room, kind, data, at, ...)
  redis.call('XADD', outbox, '*', 'type', kind, 'data', data, 'at', at, ...)
  redis.call('PERSIST', outbox)
  if due and redis.call('ZADD', due, 'NX', 0, room) == 1 then
    redis.call('PUBLISH', '{DUE_CHANNEL}', room)
  end
end
"""


class Outbox:
    """Which events are written, the keys a script needs to write one, and
    what follows a write."""

    def __init__(self, redis: aioredis.Redis, kinds: Iterable[str]) -> None:
        self.redis = redis
        self.kinds = frozenset(kinds)
        self.clustered = isinstance(redis, RedisCluster)

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    def keys(self, room: str) -> list[str]:
        """The outbox, then (one Redis server) the due set: the KEYS a script writes with."""
        if self.clustered:
            return [outbox_key(room)]
        return [outbox_key(room), due_key_of(room)]

    async def written(self, *rooms: str) -> None:
        """After a script that may have written events about ``rooms``: on a
        cluster, mark them due (a room already due keeps its time)."""
        if self.clustered and rooms:
            pipe = self.redis.pipeline(transaction=False)
            for room in set(rooms):
                pipe.zadd(due_key_of(room), {room: 0}, nx=True)
            await pipe.execute()
