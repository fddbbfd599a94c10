"""The checks a write passes, as Lua for the scripts that make the write.

On one Redis (or the primary a Sentinel names) a script may read and write
any key, so a write's checks can run in the script that makes it: one
command and one round trip instead of a batch of checks, then the write.
Three scripts do so: the budget script (:mod:`server.store.ratelimit`),
the admission of a stream (:mod:`server.store.admission`) and the publish
script with a post's checks (:class:`PostChecks`).

- :data:`BUDGETS_LUA`: ``charge_budgets(first, n, at)`` charges the GCRA
  budgets ``KEYS[first]`` to ``KEYS[first + n - 1]``, with each one's
  interval (ms) and burst from ``ARGV[at]`` on, in pairs. Every budget is
  charged: a refused request still uses up what the others allowed.
  Returns each one's wait (ms, 0: allowed) and whether one refused.
- :data:`BAN_LUA`: ``ban_holds(key, at, n, now_ms)``, whether one of the
  bans ``ARGV[at]`` to ``ARGV[at + n - 1]`` (fields of the user's bans hash
  ``key``: ``*`` or a room) is in force at ``now_ms``.
- :data:`POST_CHECKS_LUA` reads what :class:`PostChecks` adds to the
  publish script's keys and arguments.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

# The key holds the theoretical arrival time (ms) of the next use. Redis'
# own clock is used so that every machine agrees.
BUDGETS_LUA = """
local function charge_budgets(first, n, at)
  local waits, refused = {}, false
  if n == 0 then return waits, refused end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 1, n do
    local key = KEYS[first + i - 1]
    local interval = tonumber(ARGV[at + 2 * i - 2])
    local burst = tonumber(ARGV[at + 2 * i - 1])
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local wait = tat + interval - burst * interval - now
    if wait > 0 then
      -- Lua numbers become integers in the reply: round up, never down to 0.
      waits[i] = math.ceil(wait)
      refused = true
    else
      redis.call('SET', key, tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
      waits[i] = 0
    end
  end
  return waits, refused
end
"""

# A ban is "<expiry ms, 0 for never>|<reason>" (see server.store.keys.bans_key).
BAN_LUA = """
local function ban_holds(key, at, n, now_ms)
  for i = at, at + n - 1 do
    local value = redis.call('HGET', key, ARGV[i])
    if value then
      local expiry = string.match(value, '^(%d+)|') or string.match(value, '^(%d+)$')
      if not expiry or tonumber(expiry) == 0 or tonumber(expiry) > now_ms then return true end
    end
  end
  return false
end
"""

# Where a post's checks start in the publish script's ARGV: the script's own
# arguments come first (their optional ones given as placeholders).
CHECKS_AT = 20

# post_checks(k): the checks before the idempotency record, from KEYS[k] on:
# the guessed session and name are still what they were, no ban holds, and
# the key was not first used in another room. Returns the refusal to reply with, or nil and
# what is left: the claim to make once the message is stored (the key's
# record of the room, when there was none yet), and where the budgets are.
# A refusal is {'refused', why, ...}; nothing was written for it.
POST_CHECKS_LUA = (
    BUDGETS_LUA
    + BAN_LUA
    + f"""
local function post_checks(k)
  local a = {CHECKS_AT}
  if ARGV[a] ~= '' then
    if redis.call('GET', KEYS[k]) ~= ARGV[a] then return {{'refused', 'session'}} end
    k = k + 1
  end
  if ARGV[a + 1] ~= '' then
    local name = redis.call('GET', KEYS[k])
    if name ~= ARGV[a + 1] then return {{'refused', 'name', name or ''}} end
    k = k + 1
  end
  local fields = tonumber(ARGV[a + 3])
  if fields > 0 then
    if ban_holds(KEYS[k], a + 4, fields, tonumber(ARGV[a + 2])) then
      return {{'refused', 'banned'}}
    end
    k = k + 1
  end
  a = a + 4 + fields
  local left = {{claim = false, ttl = ARGV[a], room = ARGV[a + 1]}}
  if tonumber(ARGV[a]) > 0 then
    local room = redis.call('GET', KEYS[k])
    if room and room ~= ARGV[a + 1] then return {{'refused', 'elsewhere', room}} end
    if not room then left.claim = KEYS[k] end
    k = k + 1
  end
  left.first, left.n, left.at = k, tonumber(ARGV[a + 2]), a + 3
  return nil, left
end
"""
)


@dataclasses.dataclass(frozen=True, slots=True)
class PostChecks:
    """What the publish script checks of a post before it stores it, on one
    Redis: in this order, that the session and the name guessed are still
    what they were (a worker keeps what it read lately), that no ban holds
    the user, that the idempotency key was not first used in another room
    (then the record of a retry in this room answers, charging nothing),
    and the budgets (charged). The key is claimed for the room
    once the message is stored. See :mod:`server.web.posting`."""

    room: str
    session: tuple[str, str] | None  # the guessed session's key and what it held
    name: tuple[str, str] | None  # the user's name key and the name guessed
    bans: tuple[str, Sequence[str]] | None  # the user's bans key and the fields that count
    used: str | None  # where the idempotency key's room is kept (None: no key)
    used_ttl_s: int
    budgets: Sequence[tuple[str, float, int]]  # each budget's key, interval (ms) and burst

    def add_to(self, keys: list[str], args: list[Any]) -> None:
        """Add the checks to a publish call whose arguments go up to ARGV[18]."""
        if len(args) != CHECKS_AT - 2:
            raise ValueError(f"the checks go after ARGV[{CHECKS_AT - 2}], not {len(args)}")
        args.append(len(keys) + 1)  # ARGV[19]: where their keys start
        args.append(self.session[1] if self.session else "")
        args.append(self.name[1] if self.name else "")
        args.append(int(time.time() * 1000))
        for guessed in (self.session, self.name):
            if guessed:
                keys.append(guessed[0])
        fields = self.bans[1] if self.bans else ()
        args += [len(fields), *fields]
        if self.bans and fields:
            keys.append(self.bans[0])
        args += [self.used_ttl_s if self.used else 0, self.room, len(self.budgets)]
        if self.used:
            keys.append(self.used)
        for key, interval_ms, burst in self.budgets:
            keys.append(key)
            args += [interval_ms, burst]


class Refused(Exception):
    """A post's checks refused it in the publish script; nothing was written
    but the budgets' counts (``why`` "limited")."""

    def __init__(self, why: str, details: Sequence[Any]) -> None:
        super().__init__(why)
        self.why = why  # "session", "name", "banned", "elsewhere" or "limited"
        # name: the user's name ('' when there is none); elsewhere: the room
        # the key was first used in; limited: each budget's wait (ms).
        self.details = tuple(details)
