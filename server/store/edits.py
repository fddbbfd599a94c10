"""Editing and deleting messages: entries appended to the room's stream.

An edit or a deletion is not a change in place: it is a new entry of the
room's stream, after the message it changes, with an id and a ``p``
(predecessor) like any entry. So live delivery, resume by id and gap
notices carry it as they carry messages, in order, once (see
:mod:`server.store.relay` and :mod:`server.core.replay`). Its fields start
with ``k`` (``e``: edit, ``d``: deletion) and ``r`` (the message's id);
an edit carries the whole message as it now reads (``u``, ``n``, ``t``,
``ts`` and ``e``, when it was edited), a deletion only the author's id.

Each operation is one script (every key in the room's slot, so it runs on
a Redis Cluster too): it checks the message (a message of the stream, not
deleted, by the given author, within the edit window), appends the entry,
keeps the message's latest state in the room's changes hash (which history
pages fold in, :mod:`server.store.history`), and publishes the entry on
the room's channel as a message is published, its body the entry's fields
as JSON. The entry takes a slot of the capped history like a message.

The changes hash expires with the stream (every message and change pushes
both back). Its fields for messages trimmed from the stream are dropped
once it has more fields than the stream has entries: each live field
needs its message and its change in the stream, so that happens at most
once every half stream's worth of changes.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from ..core.errors import ChatError, EditWindow, Forbidden, NotFound
from ..core.ids import MessageId, format_id
from ..core.model import DELETION, EDIT, Change, Message
from ..core.webhook import MESSAGE_DELETED as DELETED
from ..core.webhook import MESSAGE_UPDATED as UPDATED
from . import scripts
from .keys import changes_key, channel, stream_key
from .outbox import OUTBOX_LUA, Outbox

# KEYS[1]: the stream; KEYS[2]: the changes hash.
# ARGV: [1] the message's id, [2] 'e' or 'd', [3] the author it must have
# ('' for anyone), [4] the edit window in ms, [5] the new text, [6] when it
# was edited (Unix seconds), [7] history_len, [8] the room's channel, [9]
# the room's expiry in seconds; with a webhook for this kind of change,
# [10] where the outbox keys start in KEYS and [11] the room (see
# server.store.outbox).
# Returns 'not_found', 'forbidden' or 'edit_window' (having written
# nothing), or the new entry: its id and its fields.
_CHANGE_SCRIPT = (
    OUTBOX_LUA
    + """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not found or found[2][1] == 'k' then return 'not_found' end
if redis.call('HGET', KEYS[2], ARGV[1]) == 'd' then return 'not_found' end
local message = {}
for i = 1, #found[2], 2 do message[found[2][i]] = found[2][i + 1] end
local author = message['u'] or ''
if ARGV[3] ~= '' and author ~= ARGV[3] then return 'forbidden' end
local fields, state
if ARGV[2] == 'e' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local posted = tonumber(string.match(ARGV[1], '^(%d+)'))
  if now - posted > tonumber(ARGV[4]) then return 'edit_window' end
  fields = {'k', 'e', 'r', ARGV[1], 'u', author, 'n', message['n'] or '',
    't', ARGV[5], 'ts', message['ts'] or '0', 'e', ARGV[6]}
  state = ARGV[6] .. '\\n' .. ARGV[5]
else
  fields = {'k', 'd', 'r', ARGV[1], 'u', author}
  state = 'd'
end
local prev = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
fields[#fields + 1] = 'p'
fields[#fields + 1] = prev
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], state)
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
if redis.call('HLEN', KEYS[2]) > redis.call('XLEN', KEYS[1]) then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  local first_ms, first_seq = string.match(first, '^(%d+)-(%d+)$')
  first_ms, first_seq = tonumber(first_ms), tonumber(first_seq)
  for _, changed in ipairs(redis.call('HKEYS', KEYS[2])) do
    local ms, seq = string.match(changed, '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    if ms < first_ms or (ms == first_ms and seq < first_seq) then
      redis.call('HDEL', KEYS[2], changed)
    end
  end
end
local body = {}
for i = 1, #fields - 2, 2 do body[fields[i]] = fields[i + 1] end
redis.call('PUBLISH', ARGV[8], 'm\\n' .. prev .. '\\n' .. id .. '\\n' .. cjson.encode(body))
local hook = tonumber(ARGV[10] or '0')
if hook > 0 then
  -- (The times as stored, not through cjson, which keeps 14 digits.)
  local data = {id = ARGV[1], room = ARGV[11], user_id = author, name = message['n'] or '',
    text = message['t'] or ''}
  local kind, times = 'message.deleted', ',"ts":' .. (message['ts'] or '0') .. '}'
  if ARGV[2] == 'e' then
    kind, data['text'] = 'message.updated', ARGV[5]
    times = ',"ts":' .. (message['ts'] or '0') .. ',"edited":' .. ARGV[6] .. '}'
  end
  local json = string.sub(cjson.encode(data), 1, -2) .. times
  outbox_write(KEYS[hook], KEYS[hook + 1], ARGV[11], kind, json, ARGV[6])
end
return {id, fields}
"""
)

_REFUSALS: dict[str, tuple[type[ChatError], str]] = {
    "not_found": (NotFound, "no such message in this room (or it was deleted)"),
    "forbidden": (Forbidden, "only its author may change this message"),
    "edit_window": (EditWindow, "this message is too old to be edited"),
}


class Edits:
    """Edits and deletions of a room's messages, in Redis."""

    __slots__ = ("_change", "history_len", "outbox", "room_ttl_s")

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        history_len: int,
        room_ttl_s: int,
        outbox: Outbox | None = None,
    ) -> None:
        self.history_len = history_len
        self.room_ttl_s = room_ttl_s
        self.outbox = outbox  # where webhook events go (None: nowhere)
        self._change = scripts.register(redis, _CHANGE_SCRIPT)

    async def edit(
        self, room: str, message_id: MessageId, author: str, text: str, *, window_s: int
    ) -> Change:
        """Give the message ``text`` as its new text, if ``author`` wrote it
        within the last ``window_s`` seconds; the edit (whose :meth:`to_dict`
        is the message as it now reads)."""
        window_ms = window_s * 1000 if window_s else -1  # 0: never
        return await self._run(room, message_id, EDIT, author, window_ms, text, time.time())

    async def delete(self, room: str, message_id: MessageId, author: str | None) -> Change:
        """Delete the message, if ``author`` wrote it (None: whoever did); the deletion."""
        return await self._run(room, message_id, DELETION, author or "", 0, "", time.time())

    async def _run(
        self,
        room: str,
        message_id: MessageId,
        kind: str,
        author: str,
        window_ms: int,
        text: str,
        edited: float,
    ) -> Change:
        """Run the script; raise the ChatError of a refusal (nothing written)."""
        keys = [stream_key(room), changes_key(room)]
        hook: list[Any] = []
        outbox = self.outbox
        if outbox is not None and outbox.wants(UPDATED if kind == EDIT else DELETED):
            hook = [len(keys) + 1, room]
            keys.extend(outbox.keys(room))
        reply = await self._change(
            keys=keys,
            args=[
                format_id(message_id),
                kind,
                author,
                window_ms,
                text,
                repr(edited),
                self.history_len,
                channel(room),
                self.room_ttl_s,
                *hook,
            ],
        )
        if isinstance(reply, str):
            error, why = _REFUSALS[reply]
            raise error(why)
        if hook and outbox is not None:
            await outbox.written(room)
        entry_id, fields = reply
        pairs = dict(zip(fields[::2], fields[1::2], strict=True))
        change = Message.from_fields(room, str(entry_id), pairs)
        assert isinstance(change, Change)
        return change
