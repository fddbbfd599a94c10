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


# Give back one message taken from the budget (a retry that stored nothing):
# the theoretical arrival time moves back one interval, never before now.
_REFUND_SCRIPT = """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
tat = tat - tonumber(ARGV[1])
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
end
return 1
"""


def _key(key: str) -> str:
    return f"chat:rate:{{{key}}}"


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, *, per_s: float, burst: int) -> None:
        self.interval_ms = 1000.0 / per_s
        self.burst = burst
        self._script = redis.register_script(_SCRIPT)
        self._refund = redis.register_script(_REFUND_SCRIPT)

    async def acquire(self, key: str) -> float:
        """Take one message from the budget of ``key`` (a user id or an address);
        0 if allowed, else seconds to wait."""
        wait_ms = await self._script(keys=[_key(key)], args=[self.interval_ms, self.burst])
        return 0.0 if not wait_ms else max(1, math.ceil(int(wait_ms) / 1000))

    async def refund(self, key: str) -> None:
        """Give back the message :meth:`acquire` just took from the budget of ``key``."""
        await self._refund(keys=[_key(key)], args=[self.interval_ms])
