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
from .outbox import Outbox
from .presence_scripts import JOIN, LEAVE, RENEW, SYNC


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
        self._join = scripts.register(redis, JOIN)
        self._renew = scripts.register(redis, RENEW)
        self._leave = scripts.register(redis, LEAVE)
        self._sync = scripts.register(redis, SYNC)

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

    def sync(self, room: str, held: list[tuple[Holder, int]]) -> Call:
        """The script that makes ``held`` this worker's connections in the room,
        exactly: the others leave, those missing join (replies: fresh lease, swept)."""
        pairs = [v for holder, cid in held for v in (self.member(holder, cid), holder.user_id)]
        return self._call(self._sync, room, *pairs)

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
