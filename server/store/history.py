"""History pages as readers see them: each message's latest text, deleted ones left out.

A room's stream holds messages and, after them, the entries that edit or
delete them (see :mod:`server.store.edits`). Those entries are for the
live streams and resumes, which pass them on in order; a history page
instead folds them in. The latest state of each changed message is in the
room's changes hash (``d``, or ``<edited ts>\\n<text>``), so a page needs no
read of the newer entries that changed it: these scripts read entries
newest-first (or, for the rest of a page, oldest-first) in chunks, skip
the change entries and deleted messages, take the latest text of edited
ones (with field ``e``, when), and stop once they have the page. ``limit``
is exact: a page of 50 has 50 messages whenever the room has that many
before its bound, however many were deleted among them.

The first chunk is as long as the page, so a room with few changes costs
one read of the stream as before; the next ones at least 100 entries. The
worst case (a long run of deleted messages) reads on, never past the
stream's length (``history_len``).
"""

from __future__ import annotations

# Defines fold(entry): the entry as a reader sees it, or nil when it is not a
# message (an edit or a deletion: its first field is "k") or was deleted.
# KEYS[2] is the room's changes hash; rooms without one read nothing more.
FOLD = """
local CHUNK_MIN = 100
local changed = redis.call('EXISTS', KEYS[2]) == 1
local function fold(entry)
  local fields = entry[2]
  if fields[1] == 'k' then return nil end
  if not changed then return entry end
  local state = redis.call('HGET', KEYS[2], entry[1])
  if not state then return entry end
  if state == 'd' then return nil end
  local cut = string.find(state, '\\n', 1, true)
  for i = 1, #fields, 2 do
    if fields[i] == 't' then fields[i + 1] = string.sub(state, cut + 1) end
  end
  fields[#fields + 1] = 'e'
  fields[#fields + 1] = string.sub(state, 1, cut - 1)
  return entry
end
"""

# A history page: of the newest ARGV[2] messages up to ARGV[1] (an XREVRANGE
# bound), the oldest ARGV[3], oldest first; and, when that leaves some of
# them out, the newest one's id, where the rest (HISTORY_AFTER) ends.
HISTORY = (
    FOLD
    + """
local limit = tonumber(ARGV[2])
local chunk = limit
local found = {}
local bound = ARGV[1]
while #found < limit do
  local entries = redis.call('XREVRANGE', KEYS[1], bound, '-', 'COUNT', chunk)
  for i = 1, #entries do
    local entry = fold(entries[i])
    if entry then
      found[#found + 1] = entry
      if #found == limit then break end
    end
  end
  if #entries < chunk then break end
  bound = '(' .. entries[#entries][1]
  chunk = math.max(chunk, CHUNK_MIN)
end
local last = math.max(1, #found - tonumber(ARGV[3]) + 1)
local page = {}
for i = #found, last, -1 do page[#page + 1] = found[i] end
if last > 1 then return {page, found[1][1]} end
return {page}
"""
)

# The rest of a page: at most ARGV[3] messages after ARGV[1] up to ARGV[2]
# (both ids), oldest first.
HISTORY_AFTER = (
    FOLD
    + """
local count = tonumber(ARGV[3])
local chunk = count
local found = {}
local after = ARGV[1]
while #found < count do
  local entries = redis.call('XRANGE', KEYS[1], '(' .. after, ARGV[2], 'COUNT', chunk)
  for i = 1, #entries do
    local entry = fold(entries[i])
    if entry then
      found[#found + 1] = entry
      if #found == count then break end
    end
  end
  if #entries < chunk then break end
  after = entries[#entries][1]
  chunk = math.max(chunk, CHUNK_MIN)
end
return found
"""
)
