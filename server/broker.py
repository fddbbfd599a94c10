"""Redis Streams as the source of truth: publishing, history, and the worker's reader.

Each room is a capped stream. A message is stored with XADD (the 201 comes
only after Redis has it), and every worker runs exactly one blocking XREAD
over the rooms its clients listen to. Because the reader keeps a cursor per
room, a Redis outage or a reconnect loses nothing: the next XREAD continues
from the cursor. No pub/sub channel is needed, so nothing published while a
worker was disconnected can be missed.

A per-worker "wake" stream is part of every XREAD so that a new room can be
added to a read that is already blocked: an XADD to the wake stream ends the
read at once, and the next one includes the new room. Unlike CLIENT UNBLOCK,
this has no race with a read that is about to be sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .hub import Hub
from .model import Message, format_id

log = logging.getLogger(__name__)

READ_BLOCK_MS = 10_000
READ_COUNT = 1000
WAKE_TTL_MS = 3_600_000


def stream_key(room: str) -> str:
    # The braces are a Redis Cluster hash tag: all of a room's keys share a slot.
    return f"chat:{{{room}}}:messages"


def _entries(response: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """Normalise an XREAD reply: a list of pairs under RESP2, a dict under RESP3.

    RESP3 wraps each stream's entries in one more list.
    """
    if not response:
        return []
    pairs = response.items() if isinstance(response, dict) else response
    result = []
    for key, value in pairs:
        entries = value[0] if value and isinstance(value[0], list) else value
        result.append((key, entries))
    return result


class Broker:
    """Stores and reads messages; implements the hub's :class:`~server.hub.Backend`."""

    def __init__(self, redis: aioredis.Redis, *, history_len: int) -> None:
        self.redis = redis
        self.history_len = history_len

    async def publish(self, room: str, user_id: str, name: str, text: str) -> Message:
        ts = time.time()
        fields: dict[Any, Any] = {
            "u": user_id,
            "n": name,
            "t": text,
            "ts": repr(ts),
        }
        message_id = await self.redis.xadd(
            stream_key(room), fields, maxlen=self.history_len, approximate=True
        )
        return Message(str(message_id), room, user_id, name, text, ts)

    async def history(self, room: str, limit: int, before: str | None) -> list[Message]:
        """The newest ``limit`` messages older than ``before``, oldest first."""
        newest = "(" + before if before else "+"
        entries = await self.redis.xrevrange(stream_key(room), max=newest, min="-", count=limit)
        return [Message.from_fields(room, id, fields) for id, fields in reversed(entries or [])]

    async def read_after(self, room: str, after: str, count: int) -> list[Message]:
        entries = await self.redis.xrange(stream_key(room), min="(" + after, max="+", count=count)
        return [Message.from_fields(room, id, fields) for id, fields in entries or []]

    async def last_id(self, room: str) -> str:
        entries = await self.redis.xrevrange(stream_key(room), count=1)
        return str(entries[0][0]) if entries else "0-0"


class StreamReader:
    """The worker's single blocking reader: Redis streams in, hub dispatch out."""

    def __init__(self, redis_url: str, hub: Hub) -> None:
        self.hub = hub
        self.wake_key = f"chat:wake:{uuid.uuid4().hex}"
        # A connection of its own with no socket timeout shorter than the block.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=READ_BLOCK_MS / 1000 + 10,
            single_connection_client=True,
        )
        self._wake_cursor = "0-0"
        self._stopping = False
        self.connected = asyncio.Event()

    async def run_waker(self, redis: aioredis.Redis) -> None:
        """End the reader's current XREAD whenever a room is added to the hub.

        The XADD lands after the reader's wake cursor, so the XREAD in flight
        (or the next one, if it was not sent yet) returns at once.
        """
        while True:
            await self.hub.changed.wait()
            self.hub.changed.clear()
            await self._wake(redis)

    async def _wake(self, redis: aioredis.Redis) -> None:
        try:
            pipe = redis.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.pexpire(self.wake_key, WAKE_TTL_MS)
            await pipe.execute()
        except (RedisError, OSError):
            # Try again shortly: until the reader is woken, a new room would
            # wait for the current XREAD to time out.
            if not self._stopping:
                await asyncio.sleep(0.2)
                self.hub.changed.set()

    async def run(self) -> None:
        """Read forever; reconnect with capped, jittered backoff on Redis errors."""
        failures = 0
        while not self._stopping:
            streams: dict[Any, Any] = {self.wake_key: self._wake_cursor}
            rooms = {stream_key(name): name for name in self.hub.rooms}
            for name, cursor in self.hub.cursors().items():
                streams[stream_key(name)] = format_id(cursor)
            try:
                response = await self.redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
            except Exception as exc:
                # Not only Redis errors: whatever happens, this loop must not
                # die and leave the worker deaf.
                self.connected.clear()
                failures += 1
                delay = min(5.0, 0.05 * 2**failures) * random.uniform(0.5, 1.0)
                if failures == 1:
                    if isinstance(exc, (RedisError, OSError)):
                        log.warning("stream reader lost Redis (%s); reconnecting", exc)
                    else:
                        log.exception("stream reader failed; retrying")
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("stream reader reconnected to Redis")
                failures = 0
            self.connected.set()
            for key, entries in _entries(response):
                if key == self.wake_key:
                    self._wake_cursor = str(entries[-1][0])
                    continue
                room = rooms.get(key)
                if room is not None and entries:
                    self.hub.dispatch(
                        room, [Message.from_fields(room, id, fields) for id, fields in entries]
                    )

    async def stop(self, task: asyncio.Task[None], redis: aioredis.Redis) -> None:
        """End :meth:`run` (running as ``task``) and close the reader's connection.

        The reader is woken rather than cancelled: a redis-py command
        cancelled in the middle of a blocking read can hang instead of
        raising, so cancelling is only the fallback.
        """
        self._stopping = True
        await self._wake(redis)
        done, _ = await asyncio.wait([task], timeout=2)
        if not done:
            task.cancel()
            await asyncio.wait([task], timeout=1)
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(self.wake_key)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
