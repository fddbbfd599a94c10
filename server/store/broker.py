"""Storing and reading messages: each room is a capped Redis Stream.

The stream is the source of truth for history and resume. Publishing runs
one script that appends the message to the stream and publishes it, with
its id and the id of the message before it, on the room's channel (for
:mod:`server.store.relay`). Both keys carry the room as a hash tag (``{room}``).
The stream expires ``room_ttl_s`` after its newest message: a room nobody
writes to leaves nothing behind (its presence keys go with its last
connection).

Each entry also keeps the id of the entry before it (field ``p``). Trimming
removes the oldest entries, so the first entry after a client's id tells,
at no extra cost, whether anything between the two is gone: its ``p`` is
newer than the client's id exactly when messages the client never got were
trimmed away (or the room's history started again after that id). Nothing
extra is written or read per message. Entries stored before ``p`` existed
get their predecessor from the stream, or from Redis 7's
``max-deleted-entry-id`` for the oldest one (unknown on older Redis).
"""

from __future__ import annotations

import functools
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from ..common.config import Config
from ..core.ids import FIRST_ID, LAST_ID, MessageId, format_id, parse_id
from ..core.model import Message
from ..core.webhook import MESSAGE_CREATED
from . import failures, history, scripts
from .batch import Batch
from .checks import PostChecks
from .keys import changes_key, idempotency_record_key, stream_key
from .outbox import Outbox
from .publish import (
    PUBLISH_SCRIPT,
    NewRoom,
    publish_call,
    published_message,
)
from .read_marks import ReadMark
from .room_registry import RoomRegistry

# The predecessor of an entry stored without "p": the entry before it, or,
# for the stream's oldest, the newest one trimmed away (Redis 7 keeps it;
# '0-0' when nothing was). Nil when Redis cannot tell.
_PREDECESSOR_SCRIPT = """
local before = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if before[1] then return before[1][1] end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return false end
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then return info[i + 1] end
end
return false
"""


def _only(replies: list[Any]) -> Any:
    return replies[0]


class Broker:
    """Stores and reads messages."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        history_len: int,
        room_ttl_s: int = Config.model_fields["room_ttl_s"].default,
        outbox: Outbox | None = None,
    ) -> None:
        self.redis = redis
        self.outbox = outbox  # where webhook events go (None: nowhere)
        self._created = outbox is not None and outbox.wants(MESSAGE_CREATED)
        self.history_len = history_len
        self.room_ttl_s = room_ttl_s
        # The rooms with history: a room is registered before it is created.
        self.rooms = RoomRegistry(redis, room_ttl_s=room_ttl_s)
        self._publish = scripts.register(redis, PUBLISH_SCRIPT)
        # A message's keys and arguments for that script, with this broker's settings.
        self._publish_call = functools.partial(
            publish_call,
            history_len=history_len,
            room_ttl_s=room_ttl_s,
            outbox=outbox if self._created else None,
        )
        self._predecessor = redis.register_script(_PREDECESSOR_SCRIPT)
        self._history = redis.register_script(history.HISTORY)
        self._history_after = redis.register_script(history.HISTORY_AFTER)

    async def publish(self, room: str, user_id: str, name: str, text: str) -> Message:
        message, _ = await self.publish_once(room, user_id, name, text, None)
        return message

    async def publish_once(
        self,
        room: str,
        user_id: str,
        name: str,
        text: str,
        key: str | None,
        *,
        may_create: bool = True,
        read_mark: ReadMark | None = None,
        checks: PostChecks | None = None,
    ) -> tuple[Message, bool]:
        """Store and publish a message; True with it when it was stored now
        (and, with ``read_mark``, its room read up to it by its user; with
        ``checks``, checked first, or :class:`~server.store.checks.Refused`:
        see :func:`~server.store.publish.publish_call`).

        Unless ``may_create``, a message that would create the room raises
        :class:`NewRoom` and nothing is stored.

        With an idempotency ``key``: if ``user_id`` published a message with
        the same key in this room within ``IDEMPOTENCY_TTL_S`` (or
        ``room_ttl_s``, if shorter), that message is returned with False, and
        nothing is stored or published. Atomic, in one round trip.
        """
        call = self._publish_call(
            room,
            user_id,
            name,
            text,
            key,
            may_create=may_create,
            read_mark=read_mark,
            checks=checks,
        )
        batch = Batch(self.redis)
        reply = batch.scripts([(self._publish, call.keys, call.args)], _only)
        await batch.run()
        outcome = call.outcome(reply.value)
        if self._created and self.outbox is not None:
            # (A retry marks it too: the mark of the first may have been lost.)
            await self.outbox.written(room)
        return outcome

    async def publish_many(
        self,
        rooms: list[str],
        user_id: str,
        name: str,
        text: str,
        key: str | None,
        *,
        may_create: bool,
    ) -> list[tuple[Message, bool] | Exception]:
        """:meth:`publish_once` in each of ``rooms``, in one round trip: each
        room's outcome, or what refused it there (:class:`NewRoom`, or an
        error of Redis, such as a full one), in the order of ``rooms``."""
        calls = [
            self._publish_call(room, user_id, name, text, key, may_create=may_create)
            for room in rooms
        ]
        pipe = self.redis.pipeline(transaction=False)
        sha = self._publish.sha
        for call in calls:
            pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        outcomes: list[tuple[Message, bool] | Exception] = []
        for call, answer in zip(calls, await pipe.execute(raise_on_error=False), strict=True):
            reply = answer
            try:
                if isinstance(reply, NoScriptError):  # (Redis lost its scripts: a restart)
                    reply = await self._publish(keys=call.keys, args=call.args)
                if isinstance(reply, Exception):
                    raise reply
                outcomes.append(call.outcome(reply))
            except (NewRoom, *failures.FAILURES, ResponseError) as exc:
                outcomes.append(exc)
        if self._created and self.outbox is not None:
            await self.outbox.written(*rooms)
        return outcomes

    async def published_with(self, room: str, user_id: str, key: str) -> Message | None:
        """The message ``user_id`` published with idempotency ``key``, if it is remembered."""
        published = await self.redis.get(idempotency_record_key(room, user_id, key))
        return None if published is None else published_message(room, str(published))

    async def history(
        self, room: str, limit: int, before: MessageId | None, page: int
    ) -> tuple[list[Message], str | None]:
        """The newest ``limit`` messages older than ``before``, oldest first, at
        most ``page`` of them: with the id of the newest when some are left,
        read by :meth:`history_after`, else None. Each with its latest text;
        deleted messages are left out (see :mod:`server.store.history`).

        A page at a time, so that a reader holds one page, not the whole history.
        """
        if before == FIRST_ID:
            return [], None  # nothing is older (and Redis refuses the range)
        newest = "(" + format_id(before) if before else "+"
        keys = [stream_key(room), changes_key(room)]
        reply = await self._history(keys=keys, args=[newest, limit, page])
        messages = [
            Message.from_fields(room, str(id), dict(zip(fields[::2], fields[1::2], strict=True)))
            for id, fields in reply[0]
        ]
        return messages, str(reply[1]) if len(reply) > 1 else None

    async def history_after(self, room: str, after: str, until: str, page: int) -> list[Message]:
        """At most ``page`` messages after ``after`` up to ``until`` (both ids),
        oldest first, as :meth:`history` gives them."""
        keys = [stream_key(room), changes_key(room)]
        entries = await self._history_after(keys=keys, args=[after, until, page])
        return [
            Message.from_fields(room, str(id), dict(zip(fields[::2], fields[1::2], strict=True)))
            for id, fields in entries
        ]

    async def read_after(self, room: str, after: MessageId, count: int) -> list[Message]:
        """Up to ``count`` messages after ``after``, oldest first, each with its ``prev``."""
        if after == LAST_ID:
            return []  # nothing can follow (and Redis refuses the range)
        key = stream_key(room)
        entries = await self.redis.xrange(key, min="(" + format_id(after), max="+", count=count)
        messages = [Message.from_fields(room, id, fields) for id, fields in entries or []]
        for index, message in enumerate(messages):
            if message.prev is not None:
                continue
            # Stored before entries kept their predecessor. Within one read the
            # entries are consecutive (the stream only loses its oldest), so
            # only the first of the page needs asking.
            if index:
                message.prev = messages[index - 1].parsed_id
            else:
                found = await self._predecessor(keys=[key], args=[message.id])
                message.prev = parse_id(str(found)) if found else None
        return messages

    async def last_id(self, room: str) -> MessageId:
        entries = await self.redis.xrevrange(stream_key(room), count=1)
        return (parse_id(str(entries[0][0])) or FIRST_ID) if entries else FIRST_ID
