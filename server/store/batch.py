"""One round trip to Redis for the commands of several stores, and of several requests.

A request often needs a few commands of several stores at once (its
budgets, the user's name, an idempotency record): sent together they cost
one round trip. Each store adds its own commands to a :class:`Batch` and
gets back a :class:`Reply`, a handle that holds what those commands
answered, parsed by the store, once the batch has run. No caller reads
another store's replies, or knows their order.

On a client of one Redis (:class:`SharingRedis`: one server, or the
primary a Sentinel names) the batches that run in the same turn of the
event loop go out together, as one pipeline (:class:`SharedPipelines`):
under load a worker's requests share their round trips, and each pays
for its commands but not for a connection, a write, a read and a wait of
its own. A Redis Cluster client sends each batch on its own, so that a
node that fails only fails the batches with keys on it.

Scripts are sent by sha, as plain ``EVALSHA`` commands (redis-py refuses
``pipe.evalsha`` on a Redis Cluster, though its pipelines route the
command by its keys like any other); a script Redis lost (a restart) is
loaded and run again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError

from .redis_compat import OneDeadlinePipeline, drop_after

T = TypeVar("T")

Call = tuple[AsyncScript, list[str], list[Any]]  # a script, its keys and its arguments

# Commands in one shared pipeline at most (a few hundred pack and parse in
# about a millisecond); a batch that finds the pipeline full opens the next.
MOST_COMMANDS = 512


class Reply(Generic[T]):
    """What some commands of a batch answered, as their store reads it."""

    __slots__ = ("_ready", "_value")

    def __init__(self) -> None:
        self._ready = False
        self._value: T | None = None

    @property
    def value(self) -> T:
        if not self._ready:
            raise RuntimeError("the batch has not run yet")
        return self._value  # type: ignore[return-value]

    def _set(self, value: T) -> None:
        self._value, self._ready = value, True


# What a batch holds until it runs: commands to put on a pipeline, how to
# read their replies, where to put what is read, and the scripts among them.
_Part = tuple[Callable[[Pipeline], object], Callable[[list[Any]], Any], Reply[Any], Sequence[Call]]


class Batch:
    """Commands of several stores, for one round trip."""

    __slots__ = ("_parts", "redis")

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._parts: list[_Part] = []

    def commands(
        self, add: Callable[[Pipeline], object], parse: Callable[[list[Any]], T]
    ) -> Reply[T]:
        """Commands that ``add`` puts on the pipeline (redis-py's own methods)
        when the batch runs; ``parse`` reads their replies, in the order they
        were added."""
        reply: Reply[T] = Reply()
        self._parts.append((add, parse, reply, ()))
        return reply

    def get(self, key: str) -> Reply[str | None]:
        """A string's value, or None."""
        return self.commands(
            lambda pipe: pipe.get(key), lambda r: None if r[0] is None else str(r[0])
        )

    def scripts(self, calls: Sequence[Call], parse: Callable[[list[Any]], T]) -> Reply[T]:
        """Scripts, run in order; ``parse`` reads their replies."""
        calls = tuple(calls)

        def add(pipe: Pipeline) -> None:
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

        reply: Reply[T] = Reply()
        self._parts.append((add, parse, reply, calls))
        return reply

    def plain_commands(self) -> list[tuple[Any, ...]]:
        """The arguments of each command added so far, for a script to run
        them instead (:mod:`server.store.admission`): the batch is then not
        run, and its replies stay unread. Only for commands without replies
        anyone reads, and not for scripts."""
        if any(calls for _, _, _, calls in self._parts):
            raise ValueError("a batch with scripts cannot hand over its commands")
        pipe = self.redis.pipeline(transaction=False)
        self._put(pipe)
        return [args for args, _ in pipe.command_stack]

    async def run(self) -> None:
        """Send every command in one round trip, then fill each reply.

        The first command that failed raises its error, once every command
        was sent (those after it ran too: this is a pipeline, not a
        transaction)."""
        parts = self._parts
        if not parts:
            return
        replies: list[Any] | None = None
        if isinstance(self.redis, SharingRedis):
            pipe, sent = self.redis.pipelines.join()
            # (All put on the pipeline now: it goes out only once this awaits.)
            first = len(pipe)
            try:
                spans = self._put(pipe)
            except BaseException:
                drop_after(pipe, first)  # (none of a batch that failed to queue goes out)
                raise
            # A command of the pipeline that cannot be packed stops it before
            # anything is sent: each batch then runs again on its own, and
            # only the one at fault fails.
            with contextlib.suppress(DataError):
                replies = (await sent)[first : first + spans[-1][1]]
        if replies is None:
            pipe = self.redis.pipeline(transaction=False)
            spans = self._put(pipe)
            replies = list(await pipe.execute(raise_on_error=False))
        for (_, _, _, calls), (start, _) in zip(parts, spans, strict=True):
            for index, (script, keys, args) in enumerate(calls, start):
                if isinstance(replies[index], NoScriptError):
                    replies[index] = await script(keys=keys, args=args)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        for (_, parse, handle, _), (start, end) in zip(parts, spans, strict=True):
            handle._set(parse(replies[start:end]))

    def _put(self, pipe: Pipeline) -> list[tuple[int, int]]:
        """Put the commands on ``pipe``; where each part's are, from the first."""
        first = len(pipe)
        spans = []
        for add, _, _, _ in self._parts:
            start = len(pipe)
            add(pipe)
            spans.append((start - first, len(pipe) - first))
        return spans


async def run(redis: aioredis.Redis, *calls: Call) -> list[Any]:
    """Run scripts in one round trip; their replies, in order."""
    batch = Batch(redis)
    replies = batch.scripts(calls, list)
    await batch.run()
    return replies.value


class SharedPipelines:
    """The pipeline that the batches of one turn of the event loop share.

    The first batch of a turn opens it and starts the task that sends it,
    which runs once the turn is over: every batch run in that turn has put
    its commands on it by then. Each waits for the replies on a future of
    its own, so that a request that is cancelled does not cancel the others.
    The pipeline has one deadline, not one per reply
    (:class:`~server.store.redis_compat.OneDeadlinePipeline`). A pipeline
    takes at most :data:`MOST_COMMANDS`; a batch that would go past opens
    the next one (sent in the same turn, on another connection), so that
    packing or parsing one never holds the loop long.
    """

    __slots__ = ("_open", "_redis", "_sending")

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._open: tuple[Pipeline, list[asyncio.Future[list[Any]]]] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def join(self) -> tuple[Pipeline, asyncio.Future[list[Any]]]:
        """The pipeline that goes out once this turn is over, and a future of
        all its replies (or of the error that stopped it)."""
        loop = asyncio.get_running_loop()
        if self._open is None or len(self._open[0]) >= MOST_COMMANDS:
            self._open = (OneDeadlinePipeline(self._redis), [])
            task = loop.create_task(self._send(self._open))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        pipe, waiting = self._open
        future: asyncio.Future[list[Any]] = loop.create_future()
        waiting.append(future)
        return pipe, future

    async def _send(self, group: tuple[Pipeline, list[asyncio.Future[list[Any]]]]) -> None:
        if self._open is group:
            self._open = None
        pipe, waiting = group
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except asyncio.CancelledError:
            for future in waiting:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001  (each waiting batch raises it)
            for future in waiting:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # (read: a batch that failed to queue never waits)
            return
        for future in waiting:
            if not future.done():
                future.set_result(replies)

    async def close(self) -> None:
        """Wait for the pipelines on their way (their batches wait for them)."""
        while self._sending:
            await asyncio.wait(list(self._sending))


class SharingRedis(aioredis.Redis):
    """A client of one Redis whose batches share their round trips
    (:class:`SharedPipelines`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipelines = SharedPipelines(self)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.pipelines.close()
        await super().aclose(close_connection_pool)
