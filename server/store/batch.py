"""One round trip to Redis for the commands of several stores.

A request often needs a few commands of several stores at once (its
budgets, the user's name, an idempotency record): sent together they cost
one round trip. Each store adds its own commands to a :class:`Batch` and
gets back a :class:`Reply`, a handle that holds what those commands
answered, parsed by the store, once the batch has run. No caller reads
another store's replies, or knows their order.

Batches sent in one iteration of the event loop share one pipeline
(:mod:`server.store.rounds`). Scripts are sent by sha, as plain
``EVALSHA`` commands (redis-py refuses ``pipe.evalsha`` on a Redis
Cluster, though its pipelines route the command by its keys like any
other); a script Redis lost (a restart) is loaded and run again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from . import rounds

T = TypeVar("T")

Call = tuple[AsyncScript, list[str], list[Any]]  # a script, its keys and its arguments


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


class Batch:
    """Commands of several stores, for one round trip."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._pipe: Pipeline = redis.pipeline(transaction=False)
        self._parts: list[tuple[int, int, Callable[[list[Any]], Any], Reply[Any]]] = []
        self._scripts: dict[int, Call] = {}

    def commands(
        self, add: Callable[[Pipeline], object], parse: Callable[[list[Any]], T]
    ) -> Reply[T]:
        """Commands that ``add`` puts on the pipeline (redis-py's own methods);
        ``parse`` reads their replies, in the order they were added."""
        start = len(self._pipe)
        add(self._pipe)
        reply: Reply[T] = Reply()
        self._parts.append((start, len(self._pipe), parse, reply))
        return reply

    def get(self, key: str) -> Reply[str | None]:
        """A string's value, or None."""
        return self.commands(
            lambda pipe: pipe.get(key), lambda r: None if r[0] is None else str(r[0])
        )

    def scripts(self, calls: Sequence[Call], parse: Callable[[list[Any]], T]) -> Reply[T]:
        """Scripts, run in order; ``parse`` reads their replies."""
        start = len(self._pipe)
        for call in calls:
            script, keys, args = call
            self._scripts[len(self._pipe)] = call
            self._pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        reply: Reply[T] = Reply()
        self._parts.append((start, len(self._pipe), parse, reply))
        return reply

    def plain_commands(self) -> list[tuple[Any, ...]]:
        """The arguments of each command added so far, for a script to run
        them instead (:mod:`server.store.admission`): the batch is then not
        run, and its replies stay unread. Only for commands without replies
        anyone reads, and not for scripts."""
        if self._scripts:
            raise ValueError("a batch with scripts cannot hand over its commands")
        return [args for args, _ in self._pipe.command_stack]

    async def run(self) -> None:
        """Send every command in one round trip (shared with other batches),
        then fill each reply.

        The first command that failed raises its error, once every command
        was sent (those after it ran too: this is a pipeline, not a
        transaction)."""
        replies = list(await rounds.execute(self.redis, self._pipe))
        for index, (script, keys, args) in self._scripts.items():
            if isinstance(replies[index], NoScriptError):
                replies[index] = await script(keys=keys, args=args)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        for start, end, parse, handle in self._parts:
            handle._set(parse(replies[start:end]))


async def run(redis: aioredis.Redis, *calls: Call) -> list[Any]:
    """Run scripts in one round trip; their replies, in order."""
    batch = Batch(redis)
    replies = batch.scripts(calls, list)
    await batch.run()
    return replies.value
