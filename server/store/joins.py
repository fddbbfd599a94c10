"""Connections joining or leaving their rooms' presence together: a script per room per round.

A storm of clients opening streams in one room would otherwise run the
room's join script once per connection, and each user coming online
would publish its own presence notice, for every worker in the room to
read presence again; a storm of them closing would do the same with the
leave script. Here the changes that arrive while a round is on its way
wait for the next, and a round runs one script per room for all of its
connections (:meth:`server.store.presence_store.PresenceStore.join`, or
:meth:`~server.store.presence_store.PresenceStore.leave`): one write, and
at most one notice, per room per round, however many joined or left. A
change alone waits for nothing but the next iteration of the event loop.
Joins and leaves go in rounds of their own (a connection leaves only
once its join was written).

Each connection waits for its round, and learns whether its change was
written (the round's error, when it failed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from . import failures
from .batch import Call
from .batch import run as run_scripts
from .presence_store import Holder

log = logging.getLogger(__name__)

# Called once a room's changes are written: the room, whether the worker's
# lease on it was new, what the script swept of dead workers, and the
# connections that joined (or left).
Settle = Callable[[str, bool, list[str], set[int]], Awaitable[None]]

# The script of a room's changes (replies: whether the lease was new, swept).
Script = Callable[[str, list[tuple[Holder, int]]], Call]


class Changes:
    """The joins (or leaves) waiting for the next round, by room."""

    def __init__(self, redis: aioredis.Redis, script: Script, settle: Settle) -> None:
        self.redis = redis
        self.script = script
        self.settle = settle
        self._waiting: dict[str, list[tuple[Holder, int]]] = {}
        self._written: dict[str, asyncio.Future[None]] = {}
        self._round: asyncio.Task[None] | None = None
        self._due = False  # a round is scheduled for the next iteration

    def add(self, room: str, holder: Holder, connection_id: int) -> asyncio.Future[None]:
        """Join (or take out) a connection in the next round; a future done once
        it is written (shared by the round's connections of the room: shield it)."""
        written = self._written.get(room)
        if written is None:
            written = self._written[room] = asyncio.get_running_loop().create_future()
            self._waiting[room] = []
        self._waiting[room].append((holder, connection_id))
        if not self._due and self._round is None:
            self._due = True
            asyncio.get_running_loop().call_soon(self._start)
        return written

    def waiting(self, room: str) -> set[int]:
        """The connections waiting for the next round in ``room``."""
        return {connection_id for _, connection_id in self._waiting.get(room, ())}

    def _start(self) -> None:
        self._due = False
        if self._round is not None or not self._waiting:
            return
        waiting, self._waiting = self._waiting, {}
        written, self._written = self._written, {}
        self._round = asyncio.get_running_loop().create_task(self._run(waiting, written))

    async def _run(
        self, waiting: dict[str, list[tuple[Holder, int]]], written: dict[str, asyncio.Future[None]]
    ) -> None:
        try:
            rooms = list(waiting)
            calls = [self.script(room, waiting[room]) for room in rooms]
            try:
                replies = await run_scripts(self.redis, *calls)
            except BaseException as exc:
                for future in written.values():
                    _fail(future, exc)  # (the connections learn it: joiners undo their joins)
                if isinstance(exc, failures.FAILURES):
                    return
                raise
            for future in written.values():
                if not future.done():
                    future.set_result(None)
            for room, (fresh, swept) in zip(rooms, replies, strict=True):
                joined = {connection_id for _, connection_id in waiting[room]}
                try:
                    await self.settle(room, bool(int(fresh)), swept, joined)
                except failures.FAILURES as exc:
                    # (The heartbeat sweeps and renews the room again.)
                    log.debug("after a round in %s: %s", room, exc)
        finally:
            self._round = None
            if self._waiting:  # what arrived meanwhile goes next
                self._start()

    async def close(self) -> None:
        """Wait for the round on its way, and the one it leaves."""
        while self._round is not None:
            await asyncio.wait([self._round])


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
        # Every connection of the round may have left meanwhile (their
        # waits are shielded): read here, so that asyncio has nothing to log.
        # Whoever still waits gets it all the same.
        future.exception()
