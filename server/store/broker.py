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

import dataclasses
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from ..common.config import Config
from ..core.ids import FIRST_ID, LAST_ID, MessageId, format_id, parse_id
from ..core.model import Message
from ..core.webhook import MESSAGE_CREATED
from ..core.wire import parse_json, to_json
from . import failures, history, scripts
from .keys import changes_key, channel, idempotency_record_key, stream_key
from .outbox import OUTBOX_LUA, Outbox
from .room_registry import RoomRegistry

# Append to the stream and publish "m", the previous id, the new id and the
# message body, in one step: no other message of the room can come between.
# Each message also pushes the room's expiry back to ARGV[8] seconds from now,
# and its changes hash's (KEYS[2], see server.store.edits) with it.
# (XADD is the first write: when Redis is out of memory the script fails
# there, having changed nothing.)
#
# With an idempotency record (KEYS[3]): when it exists, the message was
# published already, and what was published is returned instead, alone in
# the reply; else the record keeps what is published, for ARGV[9] seconds.
# It keeps the whole message rather than its id, so that a retry gets the
# same answer even after the message was trimmed from the history.
#
# With ARGV[10] == '0', a message that would create the room (its stream
# does not exist) is not stored: 'new' is returned.
#
# With a webhook for message.created, ARGV[11] is the message's JSON after
# its id, ARGV[12] where the outbox keys start in KEYS (then there is no
# idempotency record when it is 3), ARGV[13] the room: the event is written
# with the message (see server.store.outbox).
_PUBLISH_SCRIPT = (
    OUTBOX_LUA
    + """
local idem = KEYS[3]
local hook = tonumber(ARGV[12] or '0')
if hook == 3 then idem = nil end
if idem then
  local published = redis.call('GET', idem)
  if published then return {published} end
end
if ARGV[10] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 'new'
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = '0-0'
if last[1] then prev = last[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'u', ARGV[2], 'n', ARGV[3], 't', ARGV[4], 'ts', ARGV[5], 'p', prev)
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
local published = 'm\\n' .. prev .. '\\n' .. id .. '\\n' .. ARGV[7]
redis.call('PUBLISH', ARGV[6], published)
if idem then
  redis.call('SET', idem, published, 'EX', ARGV[9])
end
if hook > 0 then
  outbox_write(KEYS[hook], KEYS[hook + 1], ARGV[13], 'message.created',
    '{"id":"' .. id .. '",' .. ARGV[11], ARGV[5])
end
return {id, prev}
"""
)

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

IDEMPOTENCY_TTL_S = 600  # how long a retry with the same key gets the first message


class NewRoom(Exception):
    """The message would create its room, and was not allowed to."""


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
        self._publish = scripts.register(redis, _PUBLISH_SCRIPT)
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
    ) -> tuple[Message, bool]:
        """Store and publish a message; True with it when it was stored now.

        Unless ``may_create``, a message that would create the room raises
        :class:`NewRoom` and nothing is stored.

        With an idempotency ``key``: if ``user_id`` published a message with
        the same key in this room within ``IDEMPOTENCY_TTL_S`` (or
        ``room_ttl_s``, if shorter), that message is returned with False, and
        nothing is stored or published. Atomic, in one round trip.
        """
        call = self._publish_call(room, user_id, name, text, key, may_create)
        reply = await self._publish(keys=call.keys, args=call.args)
        outcome = call.outcome(reply)
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
        calls = [self._publish_call(room, user_id, name, text, key, may_create) for room in rooms]
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

    def _publish_call(
        self, room: str, user_id: str, name: str, text: str, key: str | None, may_create: bool
    ) -> _PublishCall:
        """The publish script's keys and arguments for one message."""
        ts = time.time()
        body = to_json([user_id, name, text, ts])
        keys = [stream_key(room), changes_key(room)]
        if key is not None:
            keys.append(idempotency_record_key(room, user_id, key))
        hook: list[Any] = []
        if self._created and self.outbox is not None:
            data = {"room": room, "user_id": user_id, "name": name, "text": text, "ts": ts}
            hook = [to_json(data)[1:], len(keys) + 1, room]
            keys.extend(self.outbox.keys(room))
        args = [
            self.history_len,
            user_id,
            name,
            text,
            repr(ts),
            channel(room),
            body,
            self.room_ttl_s,
            min(IDEMPOTENCY_TTL_S, self.room_ttl_s),
            "1" if may_create else "0",
            *hook,
        ]
        return _PublishCall(keys, args, (room, user_id, name, text, ts))

    async def published_with(self, room: str, user_id: str, key: str) -> Message | None:
        """The message ``user_id`` published with idempotency ``key``, if it is remembered."""
        published = await self.redis.get(idempotency_record_key(room, user_id, key))
        return None if published is None else self._published(room, str(published))

    @staticmethod
    def _published(room: str, published: str) -> Message:
        parsed = parse_live(room, published)
        if parsed is None:
            raise ValueError(f"malformed idempotency record in {room}")
        return parsed[1]

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


@dataclasses.dataclass(frozen=True, slots=True)
class _PublishCall:
    """One run of the publish script, and the message it is for (but its id)."""

    keys: list[str]
    args: list[Any]
    message: tuple[str, str, str, str, float]  # room, user id, name, text, ts

    def outcome(self, reply: Any) -> tuple[Message, bool]:
        """The message stored, with True; or the one published before with
        the same idempotency key, with False. NewRoom when refused for that."""
        room, user_id, name, text, ts = self.message
        if reply == "new":
            raise NewRoom(room)
        if len(reply) == 1:
            return Broker._published(room, str(reply[0])), False
        message_id, prev = reply
        return Message(str(message_id), room, user_id, name, text, ts, parse_id(str(prev))), True


def parse_live(room: str, data: str) -> tuple[MessageId, Message] | None:
    """A message as published by the publish script: (previous id, message);
    or an edit or a deletion, whose body is its stream entry's fields
    (see :mod:`server.store.edits`)."""
    try:
        _, prev, message_id, body = data.split("\n", 3)
        prev_id = parse_id(prev)
        if prev_id is None:
            return None
        fields = parse_json(body)
        if isinstance(fields, dict):
            message = Message.from_fields(room, message_id, fields)
            message.prev = prev_id
        else:
            user_id, name, text, ts = fields
            message = Message(message_id, room, user_id, name, text, float(ts), prev_id)
    except (ValueError, TypeError, AttributeError):
        return None
    return prev_id, message
