"""Putting a worker's presence in Redis back in step with the connections it holds.

Presence in Redis can part from what the worker holds when Redis loses or
regains writes behind its back: a Redis that restarted from its last
snapshot (or the last second of its append-only file), or a replica
promoted in a failover before it had the latest writes, brings back
connections that have left since and forgets those that joined; a leave
that failed while Redis was unreachable leaves its connection listed. The
users would show online forever, or not at all, while the worker holds
the room.

A room the worker comes back to is put in step by its first join
(:func:`first_joins`). Whenever presence may have parted from what the
worker holds (its pub/sub link to Redis was lost and is back, or a leave
failed), the worker is *out of step*, and its next heartbeat puts it back:
one script per room it holds (:data:`~server.store.presence_scripts.SYNC`)
makes its connections there exactly those it holds, the others leaving and
the missing joining as usual (notices, webhooks), and its connections'
entries under their owners' limits are written again.
Joins and leaves running meanwhile agree with it: each changes only what
is not so already.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from .batch import Call
from .batch import run as run_scripts
from .keys import address_connections_key, user_connections_key
from .presence_store import Holder, PresenceStore

log = logging.getLogger(__name__)

BATCH = 250  # rooms per round trip

# The worker's connections, by room: room -> {connection id: holder}.
Held = dict[str, dict[int, Holder]]
# A connection's place: its room, its id, whose it is.
Entry = tuple[str, int, Holder]


class OutOfStep:
    """Whether this worker's presence in Redis may differ from what it holds;
    :meth:`settle` puts it back in step."""

    def __init__(
        self,
        presence: PresenceStore,
        held: Held,
        free: Callable[[str, list[str]], Awaitable[None]],
        write_entries: Callable[[list[Entry], bool], Awaitable[None]],
    ) -> None:
        self.presence = presence
        self.held = held  # the worker's connections (the registry's, not a copy)
        self.free = free  # frees the slots of connections a script swept
        self.write_entries = write_entries
        self.suspected = False

    def suspect(self) -> None:
        """Presence may have parted from what the worker holds: settle at the next heartbeat."""
        self.suspected = True

    async def settle(self) -> None:
        """When suspected, write this worker's presence in every room it holds
        again. Suspected still when it fails."""
        if not self.suspected:
            return
        self.suspected = False
        try:
            held = self.held
            rooms = [room for room, conns in list(held.items()) if conns]
            for start in range(0, len(rooms), BATCH):
                batch = rooms[start : start + BATCH]
                calls = [self.presence.sync(room, _pairs(held.get(room, {}))) for room in batch]
                replies = await run_scripts(self.presence.redis, *calls)
                await self.presence.written(*batch)
                for room, (_, swept) in zip(batch, replies, strict=True):
                    await self.free(room, swept)
            entries = [
                (room, c, h) for room, conns in list(held.items()) for c, h in list(conns.items())
            ]
            await self.write_entries(entries, False)  # (also those Redis had lost)
        except BaseException:
            self.suspected = True
            raise
        log.info("presence written again in %d rooms", len(rooms))


async def free_swept(
    redis: aioredis.Redis, user_member: Callable[[str, int, str], str], room: str, swept: list[str]
) -> None:
    """Free the slots of the dead workers' connections a sweep dropped
    (``swept``: worker, connection, ...; ``user_member``: their entries)."""
    if not swept:
        return
    pipe = redis.pipeline(transaction=False)
    for worker, member in zip(swept[::2], swept[1::2], strict=True):
        user_id, connection_id, address = str(member).split("|", 2)
        entry = user_member(room, int(connection_id), str(worker))
        pipe.zrem(user_connections_key(user_id), entry)
        pipe.zrem(address_connections_key(address), entry)
    await pipe.execute()


def first_joins(
    presence: PresenceStore, held: Held
) -> Callable[[str, list[tuple[Holder, int]]], Call]:
    """The script of a round of joins in a room: a sync when the round's
    connections are all the worker holds there (it held none before), so that
    whatever Redis still lists of the worker there goes (left while Redis was
    unreachable, or brought back by a restart); else a join. (A leave round
    of the worker's earlier connections there may run before or after it:
    either way each connection goes once.)"""

    def script(room: str, joining: list[tuple[Holder, int]]) -> Call:
        # (The round's connections are among the worker's: equal in number,
        # they are all of them. A room it already holds costs one len().)
        mine = held.get(room, {})
        if len(mine) == len(joining) and all(cid in mine for _, cid in joining):
            return presence.sync(room, joining)
        return presence.join(room, joining)

    return script


def _pairs(conns: dict[int, Holder]) -> list[tuple[Holder, int]]:
    return [(holder, cid) for cid, holder in list(conns.items())]
