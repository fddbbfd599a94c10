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

import redis.asyncio as aioredis

from ..core.errors import ChatError, EditWindow, Forbidden, NotFound
from ..core.ids import MessageId, format_id
from ..core.model import DELETION, EDIT, Change, Message
from . import scripts
from .keys import changes_key, channel, stream_key

# KEYS[1]: the stream; KEYS[2]: the changes hash.
# ARGV: [1] the message's id, [2] 'e' or 'd', [3] the author it must have
# ('' for anyone), [4] the edit window in ms, [5] the new text, [6] when it
# was edited (Unix seconds), [7] history_len, [8] the room's channel, [9]
# the room's expiry in seconds.
# Returns 'not_found', 'forbidden' or 'edit_window' (having written
# nothing), or the new entry: its id and its fields.
_CHANGE_SCRIPT = """
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
return {id, fields}
"""

_REFUSALS: dict[str, tuple[type[ChatError], str]] = {
    "not_found": (NotFound, "no such message in this room (or it was deleted)"),
    "forbidden": (Forbidden, "only its author may change this message"),
    "edit_window": (EditWindow, "this message is too old to be edited"),
}


class Edits:
    """Edits and deletions of a room's messages, in Redis."""

    __slots__ = ("_change", "history_len", "room_ttl_s")

    def __init__(self, redis: aioredis.Redis, *, history_len: int, room_ttl_s: int) -> None:
        self.history_len = history_len
        self.room_ttl_s = room_ttl_s
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
        return await self._run(room, message_id, DELETION, author or "", 0, "", 0.0)

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
        reply = await self._change(
            keys=[stream_key(room), changes_key(room)],
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
            ],
        )
        if isinstance(reply, str):
            error, why = _REFUSALS[reply]
            raise error(why)
        entry_id, fields = reply
        pairs = dict(zip(fields[::2], fields[1::2], strict=True))
        change = Message.from_fields(room, str(entry_id), pairs)
        assert isinstance(change, Change)
        return change
