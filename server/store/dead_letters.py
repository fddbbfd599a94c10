"""Webhook events whose delivery gave up: kept, counted, and replayed on demand.

Dead letters are a hash (:data:`~server.store.keys.DEAD_LETTERS_KEY`) of
event id to the event as JSON (its room, type, creation, data, the last
error and when it died), so that burying one twice (a worker died between
burying it and dropping it from its outbox) keeps one. Replaying one writes
it back to the end of its room's outbox with its id (a receiver that saw it
after all drops it) and its retries starting again; replayed together,
the events of one room go back in the order they were written.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from ..core.ids import parse_id
from ..core.wire import parse_json, to_json
from .keys import DEAD_LETTERS_KEY
from .outbox import OUTBOX_LUA, Outbox
from .outbox_queue import Entry

# KEYS: the room's outbox keys. ARGV: room, type, data, at, id, since.
_REPLAY = (
    OUTBOX_LUA
    + """
outbox_write(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'id', ARGV[5], 'since', ARGV[6])
return 1
"""
)


class DeadLetters:
    """The dead letters of every room."""

    def __init__(self, redis: aioredis.Redis, outbox: Outbox) -> None:
        self.redis = redis
        self.outbox = outbox
        self._replay = redis.register_script(_REPLAY)

    async def bury(self, entry: Entry, error: str) -> None:
        letter = {
            "id": entry.id,
            "room": entry.room,
            "entry": entry.entry_id,
            "type": entry.kind,
            "created": entry.created,
            "data": entry.fields.get("data", ""),
            "tries": entry.tries + 1,
            "error": error,
            "died": time.time(),
        }
        await self.redis.hset(DEAD_LETTERS_KEY, entry.id, to_json(letter))

    async def count(self) -> int:
        return int(await self.redis.hlen(DEAD_LETTERS_KEY))

    async def all(self) -> list[dict[str, Any]]:
        """Every dead letter, in the order they would be replayed."""
        letters = []
        async for _, text in self.redis.hscan_iter(DEAD_LETTERS_KEY, count=500):
            try:
                letter = parse_json(str(text))
            except ValueError:
                continue
            if isinstance(letter, dict):
                letters.append(letter)
        return sorted(letters, key=_order)

    async def replay(self, ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Write the dead letters (those of ``ids``, or all) back to their
        rooms' outboxes; the ones replayed."""
        replayed = []
        for letter in await self.all():
            if ids is not None and letter.get("id") not in ids:
                continue
            room = str(letter["room"])
            args = [
                room,
                letter["type"],
                letter["data"],
                repr(float(letter["created"])),
                letter["id"],
                repr(time.time()),
            ]
            await self._replay(keys=self.outbox.keys(room), args=args)
            await self.outbox.written(room)
            await self.redis.hdel(DEAD_LETTERS_KEY, letter["id"])
            replayed.append(letter)
        return replayed


def _order(letter: dict[str, Any]) -> tuple[str, tuple[int, int]]:
    return str(letter.get("room", "")), parse_id(str(letter.get("entry", ""))) or (0, 0)
