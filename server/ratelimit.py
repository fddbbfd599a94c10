"""Messages per user per second, shared by every worker: a GCRA bucket in Redis."""

from __future__ import annotations

import math

import redis.asyncio as aioredis

# GCRA: the key holds the theoretical arrival time (ms) of the next message.
# Redis' own clock is used so that every machine agrees. Returns 0 when the
# message is allowed, else how many ms until it would be.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - burst * interval - now
-- Lua numbers become integers in the reply: round up, never down to 0.
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil(tat + interval - now) + 1000)
return 0
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, per_s: float, burst: int) -> None:
        self.interval_ms = 1000.0 / per_s
        self.burst = burst
        self._script = redis.register_script(_SCRIPT)

    async def acquire(self, key: str) -> float:
        """Take one message from the budget of ``key`` (a user id or an address);
        0 if allowed, else seconds to wait."""
        wait_ms = await self._script(
            keys=[f"chat:rate:{{{key}}}"], args=[self.interval_ms, self.burst]
        )
        return 0.0 if not wait_ms else max(1, math.ceil(int(wait_ms) / 1000))
