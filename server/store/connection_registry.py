"""Open connections as Redis sees them: in their room's presence, and under their owners' limits.

A connection is registered in two steps: first it takes a slot from its
user's and its client address's limits on open connections (with the
budgets its request is charged, in the same round trip), and only once
every one allows it does it join its room's presence
(:mod:`server.store.presence_store`), together with the other connections
joining the room (:mod:`server.store.joins`), its session saved meanwhile:
a refused connection writes nothing but counts, and nobody sees it come
and go. Each limit is a sorted set of its owner's connections (members
``worker:id|room``), scored by expiry. An
entry is renewed every ``USER_SLICES`` heartbeats (a slice of the
connections each heartbeat), and lasts twice that; a sweep of a dead
worker's connections frees their slots at once, so the long expiry only
matters when nobody sweeps them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Collection

import redis.asyncio as aioredis

from . import failures
from .batch import Batch
from .batch import run as run_scripts
from .joins import Changes
from .keys import (
    SIGNED_OUT_PREFIX,
    address_connections_key,
    name_key,
    user_connections_key,
)
from .moderation_store import publish_to_rooms, rooms_of, tell_user_rooms
from .outbox import Outbox
from .presence_store import Holder, PresenceStore
from .presence_sync import Entry, OutOfStep, first_joins, free_swept
from .unfinished import Unfinished

log = logging.getLogger(__name__)

# KEYS[1]: the open connections of one owner (a user, a client address),
# a sorted set scored by expiry. Drop expired entries, refuse (0) when the
# owner is at the limit, else register the connection (1). ARGV: now,
# expiry, limit, the entry, the key's lifetime (ms).
_LIMIT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

REFRESH_BATCH = 250  # rooms renewed, or user entries refreshed, per pipeline
USER_SLICES = 20  # a user entry is renewed every this many heartbeats


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConnectionRegistry:
    """The connections this worker holds, registered in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        worker_token: str,
        *,
        ttl_s: float,
        per_session_limit: int,
        per_address_limit: int,
        name_ttl_s: int,
        outbox: Outbox | None = None,
    ) -> None:
        self.redis = redis
        self.worker_token = worker_token
        self.presence = PresenceStore(redis, worker_token, int(ttl_s * 1000), outbox)
        # A user entry is renewed every USER_SLICES heartbeats (ttl_s is two).
        self.user_ttl_ms = int(ttl_s * 1000) * USER_SLICES
        self.per_session_limit = per_session_limit
        self.per_address_limit = per_address_limit
        self.name_ttl_s = name_ttl_s
        self._limit = redis.register_script(_LIMIT_SCRIPT)
        # What this worker holds: room -> {connection id: (user id, address key)}.
        self._held: dict[str, dict[int, Holder]] = {}
        self._ticks = 0
        self._finishing = Unfinished()  # undos and closes on their way
        self._joins = Changes(redis, first_joins(self.presence, self._held), self._settle)
        self._leaves = Changes(redis, self.presence.leave, self._settle)
        self._free = functools.partial(free_swept, redis, self.user_member)
        self.out_of_step = OutOfStep(self.presence, self._held, self._free, self._write_entries)

    def user_member(self, room: str, connection_id: int, worker: str | None = None) -> str:
        """A connection in its owners' sets: where it is comes last (see :meth:`set_name`)."""
        return f"{worker or self.worker_token}:{connection_id}|{room}"

    async def reserve(
        self,
        room: str,
        user_id: str,
        connection_id: int,
        address: str,
        *,
        ttl_s: int | None = None,
        batch: Batch | None = None,
    ) -> str | None:
        """Take a slot from the user's and the client address's limits on
        open connections, with the commands of ``batch`` (the request's
        budgets, say) in one round trip; what is full (``"session"``,
        ``"address"``), or None.

        Nothing but those counts is written: a connection that is refused
        (here, or by the caller for what the rest of the batch said) joins
        nothing. When a limit is full, the slot taken from the other is
        given back; otherwise the caller then calls :meth:`join` or
        :meth:`release`. The user's entry lives as long as the session
        (``ttl_s`` when it is new).
        """
        now = _now_ms()
        expiry = now + self.user_ttl_ms
        entry = self.user_member(room, connection_id)
        lifetime_ms = (ttl_s or self.name_ttl_s) * 1000
        batch = Batch(self.redis) if batch is None else batch
        slots = batch.scripts(
            [
                (
                    self._limit,
                    [user_connections_key(user_id)],
                    [now, expiry, self.per_session_limit, entry, lifetime_ms],
                ),
                (
                    self._limit,
                    [address_connections_key(address)],
                    [now, expiry, self.per_address_limit, entry, self.user_ttl_ms],
                ),
            ],
            lambda replies: [bool(int(reply)) for reply in replies],
        )
        await batch.run()
        for_session, for_address = slots.value
        if for_session and for_address:
            return None
        await self.release(room, Holder(user_id, address), connection_id)
        return "session" if not for_session else "address"

    async def release(self, room: str, holder: Holder, connection_id: int) -> None:
        """Give back the slots :meth:`reserve` took for a connection that is not joining."""
        entry = self.user_member(room, connection_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(user_connections_key(holder.user_id), entry)
        pipe.zrem(address_connections_key(holder.address), entry)
        await pipe.execute()

    async def join(
        self, room: str, holder: Holder, connection_id: int, *, batch: Batch | None = None
    ) -> None:
        """Put a connection whose slots are reserved in its room's presence, with
        the other joins of its round, and run ``batch`` (a session to save) meanwhile."""
        self._held.setdefault(room, {})[connection_id] = holder
        joined = self._joins.add(room, holder, connection_id)
        try:
            if batch is not None:
                await batch.run()
            await asyncio.shield(joined)
        except BaseException:
            # The join may have been applied: undo it, whatever happens to us.
            self._finishing.start(self._undo(room, holder, connection_id, joined))
            raise

    async def _settle(self, room: str, fresh: bool, swept: list[str], joined: set[int]) -> None:
        """After a round of joins in ``room``: webhooks told, the slots of the dead
        workers' connections freed, and, when the lease was new, the others joined again."""
        await self.presence.written(room)
        await self._free(room, swept)
        if fresh:  # (those waiting for the next round join with it)
            await self._rejoin(room, but=joined | self._joins.waiting(room))

    async def _undo(
        self, room: str, holder: Holder, cid: int, joined: asyncio.Future[None]
    ) -> None:
        await asyncio.wait([joined])  # (a close before the join is written would miss it)
        try:
            await self.close(room, holder, cid)
        except failures.FAILURES as exc:
            log.debug("could not undo the join of connection %s: %s", cid, exc)

    async def stop(self) -> None:
        """Wait for the joins, undos and leaves on their way."""
        await self._joins.close()
        await self._finishing.wait()
        await self._leaves.close()

    def _forget(self, room: str, connection_id: int) -> None:
        held = self._held.get(room, {})
        held.pop(connection_id, None)
        if not held:
            self._held.pop(room, None)

    async def close(self, room: str, holder: Holder, connection_id: int) -> None:
        """Take a connection out of its room's presence, with the other leaves
        of its round (:mod:`server.store.joins`), and free its slots.

        It runs to its end even if the caller is cancelled (a client that hung
        up right after closing): a slot left taken would count against the
        session and the address until it expired."""
        self._forget(room, connection_id)
        await asyncio.shield(self._finishing.start(self._close(room, holder, connection_id)))

    async def _close(self, room: str, holder: Holder, connection_id: int) -> None:
        entry = self.user_member(room, connection_id)
        batch = Batch(self.redis)
        batch.commands(
            lambda pipe: (
                pipe.zrem(user_connections_key(holder.user_id), entry),
                pipe.zrem(address_connections_key(holder.address), entry),
            ),
            list,
        )
        try:
            await asyncio.gather(batch.run(), self._leaves.add(room, holder, connection_id))
        except failures.FAILURES:
            self.out_of_step.suspect()  # (the leave may not be written)
            raise

    async def refresh(self, parts: int = 1) -> None:
        """Renew this worker's lease on its rooms, and its connections'
        entries in their owners' sets, one share of them a call.

        ``parts`` calls renew every room once, and ``parts * USER_SLICES``
        every user entry. Renewing sweeps each room of the connections of
        workers that died, which publishes a presence notice when someone
        went offline.
        """
        await self.out_of_step.settle()
        tick = self._ticks
        self._ticks += 1
        rooms = [room for room in self._held if hash(room) % parts == tick % parts]
        # In batches: one pipeline of thousands of commands holds the loop.
        for start in range(0, len(rooms), REFRESH_BATCH):
            batch = rooms[start : start + REFRESH_BATCH]
            replies = await run_scripts(self.redis, *map(self.presence.renew, batch))
            await self.presence.written(
                *[r for r, (_, swept) in zip(batch, replies, strict=True) if swept]
            )
            for room, (fresh, swept) in zip(batch, replies, strict=True):
                await self._free(room, swept)
                if int(fresh):
                    await self._rejoin(room)
        slices = parts * USER_SLICES
        due = [  # (no await in between: nothing changes _held meanwhile)
            (room, connection_id, holder)
            for room, held in self._held.items()
            for connection_id, holder in held.items()
            if connection_id % slices == tick % slices
        ]
        await self._write_entries(due, True)

    async def _write_entries(self, due: list[Entry], only_existing: bool) -> None:
        """Renew connections' entries in their owners' limits (``only_existing``: unless freed)."""
        expiry = _now_ms() + self.user_ttl_ms
        for start in range(0, len(due), REFRESH_BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for room, connection_id, holder in due[start : start + REFRESH_BATCH]:
                entry = {self.user_member(room, connection_id): expiry}
                pipe.zadd(user_connections_key(holder.user_id), entry, xx=only_existing)
                pipe.zadd(address_connections_key(holder.address), entry, xx=only_existing)
            await pipe.execute()

    async def _rejoin(self, room: str, but: Collection[int] = ()) -> None:
        """Join again the connections a sweep dropped while this worker stalled."""
        held = [
            (holder, connection_id)
            for connection_id, holder in list(self._held.get(room, {}).items())
            if connection_id not in but
        ]
        if held:
            ((_, swept),) = await run_scripts(self.redis, self.presence.join(room, held))
            await self.presence.written(room)
            await self._free(room, swept)

    async def set_name(self, user_id: str, name: str, *, ttl_s: int | None = None) -> None:
        """Keep the new name (as long as the session, ``ttl_s`` when it is new),
        and tell every room the user is online in to re-read presence."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(name_key(user_id), name, ex=ttl_s or self.name_ttl_s)
        pipe.zrangebyscore(user_connections_key(user_id), _now_ms(), "+inf")
        _, members = await pipe.execute()
        await publish_to_rooms(self.redis, rooms_of(members), "p")

    async def signed_out(self, user_id: str, session: str) -> None:
        """Tell every room the user is online in that the session tagged
        ``session`` signed out: its streams there end, on every worker."""
        await tell_user_rooms(self.redis, user_id, SIGNED_OUT_PREFIX + session)
