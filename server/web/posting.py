"""Posting a message, the same for HTTP and WebSocket: validate, rate-limit, store."""

from __future__ import annotations

import functools
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..common.metrics import Metrics
from ..core.errors import Banned, RateLimited
from ..core.model import Message
from ..store.batch import Batch
from ..store.broker import Broker
from ..store.checks import PostChecks, Refused
from ..store.keys import bans_key, key_used_in, name_key
from ..store.moderation_store import EVERYWHERE
from ..store.publish import IDEMPOTENCY_TTL_S, NewRoom
from ..store.ratelimit import Budget, Budgets, RateLimiter
from ..store.read_marks import ReadMark, ReadMarks
from ..store.session_store import SessionChanged
from . import write_checks
from .claims import Claim, found
from .message_input import message_text
from .sessions import User, keep_name

# The names of users who posted lately that a worker keeps (see Posting).
MOST_NAMES = 4096
BANNED, SLOW_DOWN = "you are banned from posting here", "too many messages; slow down"


class Posting:
    """Posting a message, with what it takes: the checks, the budgets, the
    idempotency claim and the store. One per app, shared by the POST
    handler and every WebSocket.

    On one Redis (or the primary a Sentinel names) a post is one round trip:
    the publish script checks it first (:class:`~server.store.checks.PostChecks`),
    with the user's name as this worker read it last, confirmed there. On a
    Redis Cluster the checks' keys live in other slots than the room's: they
    go first, as a batch, then the message (and on the first message of a
    key, its claim, between the two)."""

    __slots__ = (
        "broker",
        "budgets",
        "limiter",
        "max_chars",
        "metrics",
        "names",
        "one_redis",
        "read_marks",
        "redis",
    )

    def __init__(
        self,
        redis: aioredis.Redis,
        broker: Broker,
        limiter: RateLimiter,
        budgets: Budgets,
        metrics: Metrics,
        *,
        max_chars: int,
        read_marks: ReadMarks,
    ) -> None:
        self.redis = redis
        self.one_redis = not isinstance(redis, RedisCluster)
        self.read_marks = read_marks  # (a user's message marks its room read up to it)
        self.broker = broker
        self.limiter = limiter
        self.budgets = budgets
        self.metrics = metrics
        self.max_chars = max_chars  # of a message's text
        # The names of users who posted lately (by user id), the oldest first.
        self.names: dict[str, str] = {}

    async def post(
        self,
        room: str,
        user: User,
        text: Any,
        *,
        address: str | None,
        idempotency_key: str | None = None,
        arrived: float | None = None,
    ) -> tuple[Message, bool]:
        """Store a message in the room once it passes every check; raises a ChatError otherwise.

        A message comes out of its user's budget and its client address's: a
        client can make as many users as it likes, but it has one address
        (``address`` is its budget key). Checks come first: a message they
        refuse writes nothing but the budgets' counts.

        ``address`` None: the application's backend (the server API), which
        is trusted: no budgets, and no ban holds (it may post as a banned
        user, as in a notice about the ban). The checks of the text, and
        idempotency, are the same.

        Returns the message, and True when it is not new: ``idempotency_key``
        named a message the user already posted (within ten minutes, in this
        room or another), which is returned instead of storing another. Such a
        retry costs nothing from the budgets: it is answered even when they are
        spent (on one Redis it is never charged; on a Cluster what it took is
        given back).

        ``arrived`` (``time.monotonic()``) is when the request or frame came
        in: a stored message's publish latency is counted from it.

        A ``user`` with a ``guess`` of its session has it confirmed with the
        checks: :class:`~server.store.session_store.SessionChanged` when the
        session changed, and nothing is written.
        """
        if arrived is None:
            arrived = time.monotonic()
        text = message_text(text, self.max_chars)
        budgets = self.budgets
        charges: tuple[tuple[Budget, str], ...] = ()
        if address is not None:
            charges = ((budgets.messages, user.user_id), (budgets.address_messages, address))
        claim = Claim(
            self.redis, self.broker, self.limiter, user.user_id, idempotency_key, room, charges
        )
        signed_in, backend = user.identity is not None, address is None
        read_mark = self.read_marks.with_publish(  # (None: read_marks.posted does it)
            user.user_id, room, signed_in=signed_in, new=user.is_new, backend=backend
        )
        outcome = None
        if self.one_redis:
            outcome = await self._checked(user, text, claim, address, read_mark)
        if outcome is None:
            outcome = await self._unchecked(user, text, claim, address, read_mark)
        message, stored = outcome
        if not stored:
            return message, True
        self.metrics.published(time.monotonic() - arrived)
        self.broker.rooms.touch(room)
        if read_mark is None:
            marks = self.read_marks
            await marks.posted(user.user_id, message, signed_in, new=user.is_new, backend=backend)
        return message, False

    async def _checked(
        self,
        user: User,
        text: str,
        claim: Claim,
        address: str | None,
        read_mark: ReadMark | None,
    ) -> tuple[Message, bool] | None:
        """:meth:`post` on one Redis, checked by the publish script; None when
        the name this worker kept was not the user's (nothing written)."""
        room, user_id, key, guess = claim.room, user.user_id, claim.key, user.guess
        name = user.name or self.names.get(user_id)
        if name is None:
            return None
        checks = PostChecks(
            room,
            session=(guess.key, guess.stored) if guess is not None else None,
            name=None if user.name else (name_key(user_id), name),
            bans=(bans_key(user_id), (EVERYWHERE, room)) if address is not None else None,
            used=key_used_in(user_id, key) if key else None,
            used_ttl_s=IDEMPOTENCY_TTL_S,
            budgets=self.limiter.in_script(claim.charges),
        )
        publish = functools.partial(self.broker.publish_once, room, user_id, name, text, key)
        try:
            outcome = await publish(may_create=False, read_mark=read_mark, checks=checks)
        except Refused as refused:
            if guess is not None:
                guess.confirmed = refused.why != "session"
            return await self._refused(refused, claim)
        except NewRoom:  # (charged, and the key not claimed yet)
            outcome = None
        if guess is not None:
            guess.confirmed = True
        if outcome is not None:
            return outcome
        first = await claim.take() if key else None
        if first is not None:
            return first, False
        try:
            return await self._create(room, user_id, name, text, claim, address, read_mark)
        except BaseException:
            await claim.give_up()
            raise

    async def _refused(self, refused: Refused, claim: Claim) -> tuple[Message, bool] | None:
        """What a post refused by its checks in the publish script gets."""
        why, details = refused.why, refused.details
        if why == "session":
            raise SessionChanged
        if why == "name":
            self._keep_name(claim.user_id, str(details[0]) or None)
            return None
        if why == "banned":
            raise Banned(BANNED)
        if why == "elsewhere":
            assert claim.key is not None
            return found(
                await self.broker.published_with(str(details[0]), claim.user_id, claim.key)
            ), False
        verdict = self.limiter.verdict(claim.charges, details)
        raise RateLimited(SLOW_DOWN, retry_after=verdict.wait)

    def _keep_name(self, user_id: str, name: str | None) -> None:
        """Keep the user's name as read (forget it when None), a few thousand at most."""
        names = self.names
        names.pop(user_id, None)
        if name is None:
            return
        names[user_id] = name
        if len(names) > MOST_NAMES:
            del names[next(iter(names))]

    async def _unchecked(
        self,
        user: User,
        text: str,
        claim: Claim,
        address: str | None,
        read_mark: ReadMark | None,
    ) -> tuple[Message, bool]:
        """:meth:`post` with the checks as a batch (one round trip, with the
        name and the key's room), then the message."""
        limiter, charges, room, key = self.limiter, claim.charges, claim.room, claim.key
        user_id = user.user_id
        # The name, and the room a key was first used in, are read with the
        # budgets: no round trip of their own.
        redis = self.redis
        batch = Batch(redis)
        kept_name = batch.get(name_key(user_id)) if user.name is None else None
        claimed = batch.get(key_used_in(user_id, key)) if key else None
        retry_after = await write_checks.charge(
            batch,
            limiter,
            charges,
            user_id,
            room,
            refused=BANNED,
            bans=address is not None,
            guess=user.guess,
        )
        if claimed is not None:
            first = await claim.first_sent(claimed.value, refused=bool(retry_after))
            if first is not None:
                return first, False
        if retry_after:
            raise RateLimited(SLOW_DOWN, retry_after=retry_after)
        if claimed is not None and claimed.value is None:
            first = await claim.take()
            if first is not None:
                return first, False
        try:
            name = user.name or (kept_name.value if kept_name else None)
            if name is None:  # (a key Redis lost: the session outlived it)
                name = await keep_name(redis, user_id, None)
            if user.name is None:
                self._keep_name(user_id, name)
            publish = functools.partial(self.broker.publish_once, room, user_id, name, text, key)
            try:
                message, stored = await publish(may_create=False, read_mark=read_mark)
            except NewRoom:
                return await self._create(room, user_id, name, text, claim, address, read_mark)
        except BaseException:
            await claim.give_up()
            raise
        if not stored:  # (a retry: what it was charged is given back)
            await limiter.give_back(*charges)
        return message, stored

    async def _create(
        self,
        room: str,
        user_id: str,
        name: str,
        text: str,
        claim: Claim,
        address: str | None,
        read_mark: ReadMark | None,
    ) -> tuple[Message, bool]:
        """Store a message in a room with no history: a new room, charged to
        the address (not the backend's), and registered before it is made.
        A retry that stored nothing gives back what the post was charged."""
        broker = self.broker
        if address is not None:
            verdict = await self.limiter.take((self.budgets.address_rooms, address))
            if verdict.wait:
                raise RateLimited(
                    "too many new rooms from this address; slow down", retry_after=verdict.wait
                )
        await broker.rooms.register([room])
        message, stored = await broker.publish_once(
            room, user_id, name, text, claim.key, read_mark=read_mark
        )
        if not stored:
            await self.limiter.give_back(*claim.charges)
        return message, stored
