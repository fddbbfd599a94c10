"""Budgets shared by every worker: GCRA buckets in Redis.

A budget is a rate and a burst for one kind of thing (messages, new
sessions) and one kind of owner (a user, a client address). Every charge
of a request goes to Redis in one round trip; a refusal is counted per kind
in the worker's metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from ..common.config import Config
from ..common.metrics import Metrics
from .batch import Batch, Call, Reply
from .checks import BUDGETS_LUA
from .failures import FAILURES
from .keys import budget_key

log = logging.getLogger(__name__)

# GCRA (see server.store.checks): returns 0 when the use is allowed, else how
# many ms until it would be.
_SCRIPT = (
    BUDGETS_LUA
    + """
local waits = charge_budgets(1, 1, 1)
return waits[1]
"""
)


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


@dataclasses.dataclass(frozen=True)
class Budget:
    kind: str  # what is limited, per whom: "messages", "address_messages", ...
    per_s: float
    burst: int

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.per_s


@dataclasses.dataclass(frozen=True)
class Budgets:
    messages: Budget  # per user
    address_messages: Budget
    address_sessions: Budget
    address_rooms: Budget
    # Typing notices have budgets of their own, at the messages' rates:
    # typing never takes from what the user may post.
    typing: Budget
    address_typing: Budget

    @classmethod
    def from_config(cls, config: Config) -> Budgets:
        return cls(
            messages=Budget("messages", config.rate_limit_per_s, config.rate_limit_burst),
            address_messages=Budget(
                "address_messages", config.address_rate_limit_per_s, config.address_rate_limit_burst
            ),
            address_sessions=Budget(
                "address_sessions",
                config.address_sessions_per_min / 60,
                config.address_sessions_per_min,
            ),
            address_rooms=Budget(
                "address_rooms", config.address_rooms_per_min / 60, config.address_rooms_per_min
            ),
            typing=Budget("typing", config.rate_limit_per_s, config.rate_limit_burst),
            address_typing=Budget(
                "address_typing", config.address_rate_limit_per_s, config.address_rate_limit_burst
            ),
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the budgets said of a charge."""

    wait: float  # 0 when every budget allowed it, else the seconds to wait (the longest)
    refused: tuple[str, ...] = ()  # the kinds of the budgets that refused it


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, metrics: Metrics) -> None:
        self.redis = redis
        self.metrics = metrics
        self._script = redis.register_script(_SCRIPT)
        self._refund = redis.register_script(_REFUND_SCRIPT)

    async def take(self, *charges: tuple[Budget, str]) -> Verdict:
        """Take one from each budget, for its owner (a user id, an address key).

        A refused request still uses up what the other budgets allowed: a
        client over one limit is not owed the others.
        """
        batch = Batch(self.redis)
        verdict = self.charge(batch, *charges)
        await batch.run()
        return verdict.value

    def charge(self, batch: Batch, *charges: tuple[Budget, str]) -> Reply[Verdict]:
        """:meth:`take`, in a batch of the caller's; refusals are counted when it runs."""
        calls: list[Call] = [
            (self._script, [budget_key(budget.kind, owner)], [budget.interval_ms, budget.burst])
            for budget, owner in charges
        ]
        return batch.scripts(calls, lambda replies: self.verdict(charges, replies))

    def verdict(self, charges: Sequence[tuple[Budget, str]], replies: Sequence[Any]) -> Verdict:
        """What the budget script answered for each of ``charges`` (ms to wait,
        0: allowed), as a verdict; refusals are counted."""
        longest = 0.0
        refused = []
        for (budget, _), wait_ms in zip(charges, replies, strict=True):
            if wait_ms:
                self.metrics.rate_limited(budget.kind)
                refused.append(budget.kind)
                longest = max(longest, math.ceil(int(wait_ms) / 1000))
        return Verdict(longest, tuple(refused))

    @staticmethod
    def in_script(charges: Sequence[tuple[Budget, str]]) -> list[tuple[str, float, int]]:
        """``charges`` as a script that charges them itself takes them: each
        budget's key, interval (ms) and burst (see :mod:`server.store.checks`)."""
        return [
            (budget_key(budget.kind, owner), budget.interval_ms, budget.burst)
            for budget, owner in charges
        ]

    async def refund(self, *charges: tuple[Budget, str]) -> None:
        """Give back what :meth:`take` just took from each budget."""
        calls = [
            (self._refund, [budget_key(budget.kind, owner)], [budget.interval_ms])
            for budget, owner in charges
        ]
        batch = Batch(self.redis)
        batch.scripts(calls, list)
        await batch.run()

    async def give_back(self, *charges: tuple[Budget, str]) -> None:
        """:meth:`refund`, for a request refused after it was charged: a
        failure of Redis is only logged (the charge then stays spent)."""
        if not charges:
            return
        try:
            await self.refund(*charges)
        except FAILURES as exc:
            log.debug("budgets not given back: %s", exc)
