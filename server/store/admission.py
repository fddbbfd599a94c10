"""Admitting a stream: its checks, then its writes, in as few commands as Redis allows.

A stream is admitted when the budgets its request is charged allow it (a
new session's), no ban holds its user in its room, and it gets a slot
from its user's and its client address's limits on open streams
(:meth:`~server.store.connection_registry.ConnectionRegistry.reserve`);
only then are its writes made (its session saved, the user's name kept).

On one Redis (or the primary a Sentinel names) all of that is one script:
a storm of connects pays redis-py's cost per command (packing, a read
under its own timeout, parsing) once per stream instead of six times, and
a refused stream takes no slot at all. On a Redis Cluster the keys live
in several slots (the user's, the address's, the session's), so the
checks go as one batch of commands, each routed to its slot, and the
writes with the stream's join (:meth:`ConnectionRegistry.join`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from .batch import Batch
from .checks import BAN_LUA, BUDGETS_LUA
from .connection_registry import ConnectionRegistry
from .keys import address_connections_key, bans_key, budget_key, user_connections_key
from .moderation_store import EVERYWHERE, banned
from .presence_store import Holder
from .ratelimit import Budget, RateLimiter

# KEYS: the budgets charged (ARGV[1] of them), the user's bans, the user's
# and the address's open streams. ARGV: the number of budgets, now (ms),
# each budget's interval (ms) and burst, the number of ban fields and the
# fields, the entry, its expiry, the user's limit and its set's lifetime
# (ms), the address's limit and its set's lifetime (ms), then the writes:
# each as its number of arguments and the arguments of its command.
#
# Every budget is charged (as the budget script does: a refused request
# still uses up what the others allowed); then a ban or a refusal ends it,
# as does a full limit (nothing taken from either); else both slots are
# taken and the writes made. Returns each budget's wait (ms, 0: allowed),
# whether a ban holds, and what is full (0: nothing, 1: the user's, 2: the
# address's).
_ADMIT_SCRIPT = (
    BUDGETS_LUA
    + BAN_LUA
    + """
local budgets = tonumber(ARGV[1])
local now_ms = tonumber(ARGV[2])
local result, refused = charge_budgets(1, budgets, 3)
local at = 3 + 2 * budgets
local fields = tonumber(ARGV[at])
local ban = 0
if ban_holds(KEYS[budgets + 1], at + 1, fields, now_ms) then ban = 1 end
result[budgets + 1] = ban
result[budgets + 2] = 0
if refused or ban == 1 then return result end
at = at + fields + 1
local entry, expiry = ARGV[at], ARGV[at + 1]
for i = 1, 2 do
  local key = KEYS[budgets + 1 + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  if redis.call('ZCARD', key) >= tonumber(ARGV[at + 2 * i]) then
    result[budgets + 2] = i
    return result
  end
end
for i = 1, 2 do
  local key = KEYS[budgets + 1 + i]
  redis.call('ZADD', key, expiry, entry)
  redis.call('PEXPIRE', key, ARGV[at + 1 + 2 * i])
end
at = at + 6
local writes = tonumber(ARGV[at])
at = at + 1
for _ = 1, writes do
  local n = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
return result
"""
)

FULL = (None, "session", "address")


@dataclasses.dataclass(frozen=True)
class Admitted:
    """What the checks of a stream said, and what is left to write."""

    wait: float  # 0 when every budget allowed it, else the seconds to wait
    banned: bool
    full: str | None  # the limit on open streams that is full ("session", "address")
    # The writes still to make (with the join), or None once they are made.
    writes: Batch | None


class Admission:
    """Admitting streams: one script on one Redis, a batch of checks on a cluster."""

    def __init__(
        self, redis: aioredis.Redis, registry: ConnectionRegistry, limiter: RateLimiter
    ) -> None:
        self.redis = redis
        self.registry = registry
        self.limiter = limiter
        self._script = (
            None if isinstance(redis, RedisCluster) else redis.register_script(_ADMIT_SCRIPT)
        )

    async def admit(
        self,
        room: str,
        holder: Holder,
        connection_id: int,
        *,
        charges: Sequence[tuple[Budget, str]],
        ttl_s: int | None,
        writes: Batch,
    ) -> Admitted:
        """Charge ``charges``, check the user's bans in ``room``, and reserve the
        stream's slots; only when every one allows it, make ``writes`` (plain
        commands), or leave them to the caller (``Admitted.writes``).

        A refused stream keeps no slot, and its writes are not made. The
        user's entry lives as long as the session (``ttl_s`` when it is new).
        """
        if self._script is None:
            return await self._checked(room, holder, connection_id, charges, ttl_s, writes)
        registry = self.registry
        now = int(time.time() * 1000)
        expiry = now + registry.user_ttl_ms
        entry = registry.user_member(room, connection_id)
        fields = [EVERYWHERE, room]
        commands = writes.plain_commands()
        args: list[Any] = [len(charges), now]
        for budget, _ in charges:
            args += [budget.interval_ms, budget.burst]
        args += [len(fields), *fields, entry, expiry]
        args += [registry.per_session_limit, (ttl_s or registry.name_ttl_s) * 1000]
        args += [registry.per_address_limit, registry.user_ttl_ms, len(commands)]
        for command in commands:
            args += [len(command), *command]
        keys = [budget_key(budget.kind, owner) for budget, owner in charges]
        keys += [
            bans_key(holder.user_id),
            user_connections_key(holder.user_id),
            address_connections_key(holder.address),
        ]
        batch = Batch(self.redis)
        reply = batch.scripts([(self._script, keys, args)], lambda replies: replies[0])
        await batch.run()
        *waits, ban, full = reply.value
        verdict = self.limiter.verdict(charges, waits)
        return Admitted(verdict.wait, bool(int(ban)), FULL[int(full)], None)

    async def _checked(
        self,
        room: str,
        holder: Holder,
        connection_id: int,
        charges: Sequence[tuple[Budget, str]],
        ttl_s: int | None,
        writes: Batch,
    ) -> Admitted:
        """:meth:`admit` on a cluster: the checks as commands of their own slots."""
        registry = self.registry
        checks = Batch(self.redis)
        verdict = self.limiter.charge(checks, *charges)
        ban = banned(checks, holder.user_id, room)
        full = await registry.reserve(
            room, holder.user_id, connection_id, holder.address, ttl_s=ttl_s, batch=checks
        )
        if (verdict.value.wait or ban.value) and full is None:
            await registry.release(room, holder, connection_id)
        return Admitted(verdict.value.wait, ban.value, full, writes)
