"""The checks every write passes in one round trip: its budgets, the user's
bans, and that the session is the one the worker guessed.

A post, an edit or deletion and a typing notice each charge their budgets
and read whether the user is banned from the room in the same batch as
whatever else the write needs to read (queued by the caller), so a refused
write costs one round trip and writes nothing but the budgets' counts.
A write made with a guessed session (a session this worker read lately,
not read again for it: :meth:`~server.store.session_store.SignedRedisStorage.guess`)
reads it again in the same round trip, so that a session signed out or
changed since is never acted on.
"""

from __future__ import annotations

from ..core.errors import Banned
from ..store.batch import Batch
from ..store.moderation_store import banned
from ..store.ratelimit import Budget, RateLimiter
from ..store.session_store import Guess, SessionChanged


async def charge(
    batch: Batch,
    limiter: RateLimiter,
    charges: tuple[tuple[Budget, str], ...] | list[tuple[Budget, str]],
    user_id: str,
    room: str,
    *,
    refused: str,
    bans: bool = True,
    guess: Guess | None = None,
) -> float:
    """Charge ``charges`` and (with ``bans``) read the user's ban in the room,
    with what the caller queued in ``batch``, and run it. A banned user gets
    Banned(``refused``), what it took given back; else the seconds to wait
    before the budgets allow the write (0: allowed now, and charged).

    With a ``guess`` of the user's session, the session is read too: when
    it is no longer that, :class:`SessionChanged` is raised (what was
    taken given back), and the caller starts again from a fresh read."""
    verdict = limiter.charge(batch, *charges)
    ban = banned(batch, user_id, room) if bans else None
    same = guess.confirm(batch) if guess is not None else None
    await batch.run()
    wrong = same is not None and not same.value
    if wrong or (ban is not None and ban.value):
        if not verdict.value.wait:
            await limiter.give_back(*charges)
        if wrong:
            raise SessionChanged
        raise Banned(refused)
    return verdict.value.wait
