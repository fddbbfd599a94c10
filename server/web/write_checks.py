"""The checks every write passes in one round trip: its budgets and the user's bans.

A post, an edit or deletion and a typing notice each charge their budgets
and read whether the user is banned from the room in the same batch as
whatever else the write needs to read (queued by the caller), so a refused
write costs one round trip and writes nothing but the budgets' counts.
"""

from __future__ import annotations

from ..core.errors import Banned
from ..store.batch import Batch
from ..store.moderation_store import banned
from ..store.ratelimit import Budget, RateLimiter


async def charge(
    batch: Batch,
    limiter: RateLimiter,
    charges: tuple[tuple[Budget, str], ...] | list[tuple[Budget, str]],
    user_id: str,
    room: str,
    *,
    refused: str,
    bans: bool = True,
) -> float:
    """Charge ``charges`` and (with ``bans``) read the user's ban in the room,
    with what the caller queued in ``batch``, and run it. A banned user gets
    Banned(``refused``), what it took given back; else the seconds to wait
    before the budgets allow the write (0: allowed now, and charged)."""
    verdict = limiter.charge(batch, *charges)
    ban = banned(batch, user_id, room) if bans else None
    await batch.run()
    if ban is not None and ban.value:
        if not verdict.value.wait:
            await limiter.give_back(*charges)
        raise Banned(refused)
    return verdict.value.wait
