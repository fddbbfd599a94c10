"""What the publish script is given and what it publishes.

Publishing a message is one script (:data:`PUBLISH_SCRIPT`): it appends the
message to the room's stream, publishes it on the room's channel with its
id and the id before it, and, as asked, keeps an idempotency record and
writes a webhook event. :func:`publish_call` makes one run's keys and
arguments (:class:`PublishCall`, which also reads its reply), and
:func:`parse_live` reads what the script (or an edit's or a deletion's,
:mod:`server.store.edits`) publishes, for :mod:`server.store.relay`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..core.ids import MessageId, parse_id
from ..core.model import Message
from ..core.wire import parse_json, to_json
from .checks import POST_CHECKS_LUA, PostChecks, Refused
from .keys import changes_key, channel, idempotency_record_key, stream_key
from .outbox import OUTBOX_LUA, Outbox
from .read_marks import MARK_LUA, ReadMark

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
# idempotency record when it is 3, as for ARGV[14]), ARGV[13] the room: the event is written
# with the message (see server.store.outbox).
#
# With ARGV[14], where the user's rooms and read positions start in KEYS (on
# one Redis only: they are in the user's slot), the room is read up to the
# message, as server.store.read_marks does (ARGV[15] to ARGV[18]: the room,
# now in ms, the keys' lifetime, the most rooms kept; ARGV[11] to ARGV[13]
# are then placeholders without a webhook). The message stands if that fails.
#
# With ARGV[19], where a post's checks start in KEYS (on one Redis only; the
# arguments from ARGV[20] on, placeholders before), the post is checked
# first, and a refusal returned (see server.store.checks.PostChecks): the
# session, bans and the key's room before the idempotency record, the
# budgets after it (a retry costs nothing), the key's claim once stored.
PUBLISH_SCRIPT = (
    OUTBOX_LUA
    + MARK_LUA
    + POST_CHECKS_LUA
    + """
local idem = KEYS[3]
local hook = tonumber(ARGV[12] or '0')
local mark = tonumber(ARGV[14] or '0')
local checks = tonumber(ARGV[19] or '0')
if hook == 3 or mark == 3 or checks == 3 then idem = nil end
local checked = nil
if checks > 0 then
  local refusal
  refusal, checked = post_checks(checks)
  if refusal then return refusal end
end
if idem then
  local published = redis.call('GET', idem)
  if published then return {published} end
end
if checked then
  local waits, refused = charge_budgets(checked.first, checked.n, checked.at)
  if refused then return {'refused', 'limited', unpack(waits)} end
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
if mark > 0 then
  pcall(mark_read, KEYS[mark], KEYS[mark + 1], ARGV[15], id, ARGV[16], ARGV[17], ARGV[18])
end
if checked and checked.claim then
  redis.call('SET', checked.claim, checked.room, 'EX', checked.ttl)
end
return {id, prev}
"""
)

IDEMPOTENCY_TTL_S = 600  # how long a retry with the same key gets the first message


class NewRoom(Exception):
    """The message would create its room, and was not allowed to."""


def publish_call(
    room: str,
    user_id: str,
    name: str,
    text: str,
    key: str | None,
    *,
    may_create: bool,
    history_len: int,
    room_ttl_s: int,
    outbox: Outbox | None,
    read_mark: ReadMark | None = None,
    checks: PostChecks | None = None,
) -> PublishCall:
    """The publish script's keys and arguments for one message (``outbox``:
    where its ``message.created`` event goes, if anywhere; ``read_mark``: the
    user's keys and arguments to read the room up to it, on one Redis, see
    :meth:`~server.store.read_marks.ReadMarks.with_publish`; ``checks``: what
    to check of the post first, on one Redis too)."""
    ts = time.time()
    body = to_json([user_id, name, text, ts])
    keys = [stream_key(room), changes_key(room)]
    if key is not None:
        keys.append(idempotency_record_key(room, user_id, key))
    hook: list[Any] = []
    if outbox is not None:
        data = {"room": room, "user_id": user_id, "name": name, "text": text, "ts": ts}
        hook = [to_json(data)[1:], len(keys) + 1, room]
        keys.extend(outbox.keys(room))
    args = [
        history_len,
        user_id,
        name,
        text,
        repr(ts),
        channel(room),
        body,
        room_ttl_s,
        min(IDEMPOTENCY_TTL_S, room_ttl_s),
        "1" if may_create else "0",
        *hook,
    ]
    if read_mark is not None:
        mark_keys, mark_args = read_mark
        args += [] if hook else ["", 0, ""]
        args += [len(keys) + 1, *mark_args]
        keys.extend(mark_keys)
    if checks is not None:
        args += [] if len(args) > 10 else ["", 0, ""]
        args += [] if read_mark else [0, "", 0, 0, 0]
        checks.add_to(keys, args)
    return PublishCall(keys, args, (room, user_id, name, text, ts))


@dataclasses.dataclass(frozen=True, slots=True)
class PublishCall:
    """One run of the publish script, and the message it is for (but its id)."""

    keys: list[str]
    args: list[Any]
    message: tuple[str, str, str, str, float]  # room, user id, name, text, ts

    def outcome(self, reply: Any) -> tuple[Message, bool]:
        """The message stored, with True; or the one published before with
        the same idempotency key, with False. NewRoom when refused for that,
        :class:`~server.store.checks.Refused` when its checks refused it."""
        room, user_id, name, text, ts = self.message
        if reply == "new":
            raise NewRoom(room)
        if reply[0] == "refused":
            raise Refused(str(reply[1]), reply[2:])
        if len(reply) == 1:
            return published_message(room, str(reply[0])), False
        message_id, prev = reply
        return Message(str(message_id), room, user_id, name, text, ts, parse_id(str(prev))), True


def published_message(room: str, published: str) -> Message:
    """The message of what the publish script published (an idempotency record keeps it)."""
    parsed = parse_live(room, published)
    if parsed is None:
        raise ValueError(f"malformed idempotency record in {room}")
    return parsed[1]


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
