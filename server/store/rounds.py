"""Shared round trips: the batches a worker sends in one loop iteration go in one pipeline.

A burst of clients (a storm of connects, many POSTs at once) makes each of
its requests send a :class:`~server.store.batch.Batch` or two. Sent one
pipeline each, every batch pays for a connection from the pool, a write
and a read on it, a timeout and the client's bookkeeping, and the pool
grows to dozens of connections; Redis, too, reads and answers each on
its own. Here a batch's commands join those that other requests sent in
the same iteration of the event loop, and the group goes out as one
pipeline at the start of the next: the requests of a burst share one
round trip (at most :data:`MOST_COMMANDS` commands a pipeline, so that
packing or parsing one never holds the loop long). A request alone waits
for nothing more than the next iteration.

The replies are sliced back to each batch in order; a command's error
stays with its batch (the pipeline runs with ``raise_on_error=False``),
and an error of the whole pipeline (Redis unreachable) reaches every
batch in it. A batch whose caller was cancelled meanwhile still runs, as
a pipeline already sent would.

Only a client of one Redis (or of the primary Sentinel names) shares
pipelines this way; a cluster client's pipelines are split by node and
sent as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

# Commands in one shared pipeline at most: a batch that would take a group
# past this starts another (sent in the same iteration, on another
# connection). Packing and parsing a few hundred commands take about a
# millisecond.
MOST_COMMANDS = 512


class _Group:
    __slots__ = ("members", "pipe")

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        # Each batch's commands (start, end) in the pipeline, and where its replies go.
        self.members: list[tuple[int, int, asyncio.Future[list[Any]]]] = []


class Rounds:
    """The groups of one client: the one filling up, and those on their way."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._filling: _Group | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def execute(self, pipe: Pipeline) -> asyncio.Future[list[Any]]:
        """The replies of ``pipe``'s commands (errors among them as exceptions),
        once the group they join has run."""
        loop = asyncio.get_running_loop()
        stack = pipe.command_stack
        group = self._filling
        if group is None or (group.members and len(group.pipe) + len(stack) > MOST_COMMANDS):
            group = self._filling = _Group(self._redis.pipeline(transaction=False))
            loop.call_soon(self._send, group)
        start = len(group.pipe)
        group.pipe.command_stack.extend(stack)
        replies: asyncio.Future[list[Any]] = loop.create_future()
        group.members.append((start, len(group.pipe), replies))
        return replies

    def _send(self, group: _Group) -> None:
        if self._filling is group:
            self._filling = None
        task = asyncio.get_running_loop().create_task(self._run(group))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @staticmethod
    async def _run(group: _Group) -> None:
        try:
            replies = await group.pipe.execute(raise_on_error=False)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, _, future in group.members:
                if future.done():
                    continue
                if cancelled:
                    future.cancel()
                else:
                    future.set_exception(exc)
            if cancelled:
                raise
            return
        for start, end, future in group.members:
            if not future.done():  # (its caller was cancelled)
                future.set_result(replies[start:end])

    async def close(self) -> None:
        """Send what is filling, and wait for every group on its way."""
        if self._filling is not None:
            self._send(self._filling)
        while self._sending:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._sending)


class PipelinedRedis(aioredis.Redis):
    """A client of one Redis whose batches share round trips (see :class:`Rounds`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds = Rounds(self)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.rounds.close()
        await super().aclose(close_connection_pool)


async def execute(redis: aioredis.Redis, pipe: Pipeline) -> list[Any]:
    """Run ``pipe`` (not a transaction) with ``raise_on_error=False``: in a
    shared round trip when ``redis`` shares them."""
    if isinstance(redis, PipelinedRedis):
        return await redis.rounds.execute(pipe)
    return list(await pipe.execute(raise_on_error=False))
