"""A user's claim on an idempotency key for the room it is first used in."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from ..core.errors import IdempotencyConflict
from ..core.model import Message
from ..store import failures
from ..store.batch import Batch
from ..store.broker import Broker
from ..store.keys import key_used_in
from ..store.publish import IDEMPOTENCY_TTL_S
from ..store.ratelimit import Budget, RateLimiter

log = logging.getLogger(__name__)


class Claim:
    """A user's claim on an idempotency key for the room it is first used in.

    The claim (the user's ``key_used_in`` record, as long as the room's
    record of the message) is what makes a key hold across rooms: a retry
    sent to another room finds the first message through it. It is taken
    only once the budgets allowed the message, and given up when the
    message then fails to be stored; of two first tries sent at the same
    instant to two rooms, one takes it and the other gets the first
    message, or, while that is still being stored, 409 (retry shortly).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        broker: Broker,
        limiter: RateLimiter,
        user_id: str,
        key: str | None,
        room: str,
        charges: tuple[tuple[Budget, str], ...],
    ) -> None:
        self.redis = redis
        self.broker = broker
        self.limiter = limiter
        self.user_id = user_id
        self.key = key
        self.room = room
        self.charges = charges
        self.taken = False

    async def first_sent(self, claimed: str | None, *, refused: bool) -> Message | None:
        """The message first sent with the key, when the claim names another
        room than this one, or when the budgets refused this try (a retry to
        the claimed room is found by the publish script). Raises
        :class:`IdempotencyConflict` when that room does not have it (yet)."""
        if claimed is None or (claimed == self.room and not refused):
            return None
        assert self.key is not None
        first = await self.broker.published_with(claimed, self.user_id, self.key)
        if refused:
            return first
        await self.limiter.give_back(*self.charges)
        return found(first)

    async def take(self) -> Message | None:
        """Claim the key for this room (one round trip); the first message
        when another try claimed it for another room meanwhile."""
        assert self.key is not None
        used = key_used_in(self.user_id, self.key)
        batch = Batch(self.redis)
        taken = batch.commands(
            lambda pipe: pipe.set(used, self.room, nx=True, ex=IDEMPOTENCY_TTL_S),
            lambda replies: bool(replies[0]),
        )
        claimed = batch.get(used)
        await batch.run()
        self.taken = taken.value
        return None if self.taken else await self.first_sent(claimed.value, refused=False)

    async def give_up(self) -> None:
        """Release the claim this try took, its message not stored."""
        if not self.taken:
            return
        assert self.key is not None
        try:
            # Only this try's SET NX made it, and only this try removes it.
            await self.redis.delete(key_used_in(self.user_id, self.key))
        except failures.FAILURES as exc:
            log.debug("idempotency claim not released: %s", exc)


def found(first: Message | None) -> Message:
    """The message first sent with a key claimed for another room, or
    :class:`IdempotencyConflict` while that room does not have it (yet)."""
    if first is None:
        raise IdempotencyConflict(
            "this Idempotency-Key is being used for a message to another room; retry shortly",
            retry_after=1,
        )
    return first
