"""Posting a message, the same for HTTP and WebSocket: validate, rate-limit, store."""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any

import redis.asyncio as aioredis

from ..common.metrics import Metrics
from ..core.errors import BadRequest, IdempotencyConflict, NotFound, RateLimited, TooLarge
from ..core.model import ROOM_RE, Message
from ..core.wire import parse_json
from ..store import failures
from ..store.batch import Batch
from ..store.broker import Broker
from ..store.keys import key_used_in, name_key
from ..store.publish import IDEMPOTENCY_TTL_S, NewRoom
from ..store.ratelimit import Budget, Budgets, RateLimiter
from ..store.read_marks import ReadMark, ReadMarks
from . import write_checks
from .sessions import User, keep_name

log = logging.getLogger(__name__)

# Visible ASCII: what clients use (UUIDs, random tokens), safe in a Redis key.
IDEMPOTENCY_KEY_RE = re.compile(r"[!-~]{1,64}")


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a request body or a WebSocket frame, which must be one JSON object."""
    try:
        data = parse_json(text)
    except (ValueError, RecursionError):
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return data


def room_name(value: str) -> str:
    if not ROOM_RE.fullmatch(value):
        raise NotFound(f"no room {value!r}: names are 1-32 of a-z, 0-9, '_' and '-'")
    return value


def message_text(value: Any, max_chars: int) -> str:
    if value is None:
        raise BadRequest("missing 'text'")
    if not isinstance(value, str):
        raise BadRequest("'text' must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("'text' is not valid Unicode (lone surrogate)") from None
    if "\x00" in value:
        raise BadRequest("'text' must not contain NUL characters")
    if not value.strip():
        raise BadRequest("'text' must not be empty")
    if len(value) > max_chars:
        raise TooLarge(f"'text' is longer than {max_chars} characters")
    return value


def idempotency_key(value: Any, what: str) -> str | None:
    """An idempotency key as sent (None when there is none), or BadRequest."""
    if value is None:
        return None
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise BadRequest(f"{what} must be 1-64 visible ASCII characters (no spaces)")
    return value


class Posting:
    """Posting a message, with what it takes: the checks, the budgets, the
    idempotency claim and the store. One per app, shared by the POST
    handler and every WebSocket."""

    __slots__ = ("broker", "budgets", "limiter", "max_chars", "metrics", "read_marks", "redis")

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
        self.read_marks = read_marks  # (a user's message marks its room read up to it)
        self.broker = broker
        self.limiter = limiter
        self.budgets = budgets
        self.metrics = metrics
        self.max_chars = max_chars  # of a message's text

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

        A message comes out of its user's budget and its client address's (one
        round trip for both): a client can make as many users as it likes, but
        it has one address (``address`` is its budget key). Checks come first:
        a message they refuse writes nothing but the budgets' counts.

        ``address`` None: the application's backend (the server API), which
        is trusted: no budgets, and no ban holds (it may post as a banned
        user, as in a notice about the ban). The checks of the text, and
        idempotency, are the same.

        Returns the message, and True when it is not new: ``idempotency_key``
        named a message the user already posted (within ten minutes, in this
        room or another), which is returned instead of storing another. Such a
        retry costs nothing from the budgets: it is answered even when they are
        spent, and what it took from them is given back.

        ``arrived`` (``time.monotonic()``) is when the request or frame came
        in: a stored message's publish latency is counted from it.

        A ``user`` with a ``guess`` of its session has it confirmed with the
        budgets: :class:`~server.store.session_store.SessionChanged` when the
        session changed, and nothing is written.
        """
        if arrived is None:
            arrived = time.monotonic()
        text = message_text(text, self.max_chars)
        limiter = self.limiter
        budgets = self.budgets
        charges: tuple[tuple[Budget, str], ...] = ()
        if address is not None:
            charges = ((budgets.messages, user.user_id), (budgets.address_messages, address))
        # The name, and the room a key was first used in, are read with the
        # budgets: no round trip of their own.
        redis = self.redis
        batch = Batch(redis)
        kept_name = batch.get(name_key(user.user_id)) if user.name is None else None
        claimed = batch.get(key_used_in(user.user_id, idempotency_key)) if idempotency_key else None
        retry_after = await write_checks.charge(
            batch,
            limiter,
            charges,
            user.user_id,
            room,
            refused="you are banned from posting here",
            bans=address is not None,
            guess=user.guess,
        )
        claim = Claim(self, user.user_id, idempotency_key, room, charges)
        if claimed is not None:
            first = await claim.first_sent(claimed.value, refused=bool(retry_after))
            if first is not None:
                return first, True
        if retry_after:
            raise RateLimited("too many messages; slow down", retry_after=retry_after)
        if claimed is not None and claimed.value is None:
            first = await claim.take()
            if first is not None:
                return first, True
        try:
            name = user.name or (kept_name.value if kept_name else None)
            if name is None:  # (a key Redis lost: the session outlived it)
                name = await keep_name(redis, user.user_id, None)
            signed_in, backend = user.identity is not None, address is None
            read_mark = self.read_marks.with_publish(  # (None: read_marks.posted does it)
                user.user_id, room, signed_in=signed_in, new=user.is_new, backend=backend
            )
            message, stored = await self._publish(
                room, user.user_id, name, text, idempotency_key, address, read_mark
            )
        except BaseException:
            await claim.give_up()
            raise
        if stored:
            self.metrics.published(time.monotonic() - arrived)
            self.broker.rooms.touch(room)
            if read_mark is None:
                marks = self.read_marks
                await marks.posted(
                    user.user_id, message, signed_in, new=user.is_new, backend=backend
                )
            return message, False
        await limiter.give_back(*charges)
        return message, True

    async def _publish(
        self,
        room: str,
        user_id: str,
        name: str,
        text: str,
        key: str | None,
        address: str | None,
        read_mark: ReadMark | None,
    ) -> tuple[Message, bool]:
        """Store the message; a room with no history is a new room, charged
        to the address (not the backend's), and registered before it is made."""
        broker = self.broker
        publish = functools.partial(
            broker.publish_once, room, user_id, name, text, key, read_mark=read_mark
        )
        try:
            return await publish(may_create=False)
        except NewRoom:
            if address is not None:
                verdict = await self.limiter.take((self.budgets.address_rooms, address))
                if verdict.wait:
                    raise RateLimited(
                        "too many new rooms from this address; slow down", retry_after=verdict.wait
                    ) from None
            await broker.rooms.register([room])
            return await publish()


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
        posting: Posting,
        user_id: str,
        key: str | None,
        room: str,
        charges: tuple[tuple[Budget, str], ...],
    ) -> None:
        self.posting = posting
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
        first = await self.posting.broker.published_with(claimed, self.user_id, self.key)
        if refused:
            return first
        await self.posting.limiter.give_back(*self.charges)
        if first is None:
            raise IdempotencyConflict(
                "this Idempotency-Key is being used for a message to another room; retry shortly",
                retry_after=1,
            )
        return first

    async def take(self) -> Message | None:
        """Claim the key for this room (one round trip); the first message
        when another try claimed it for another room meanwhile."""
        assert self.key is not None
        used = key_used_in(self.user_id, self.key)
        batch = Batch(self.posting.redis)
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
            await self.posting.redis.delete(key_used_in(self.user_id, self.key))
        except failures.FAILURES as exc:
            log.debug("idempotency claim not released: %s", exc)
