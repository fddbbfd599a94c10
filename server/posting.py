"""Posting a message, the same for HTTP and WebSocket: validate, rate-limit, store."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from aiohttp import web

from . import keys, redisurl, scripts
from .broker import IDEMPOTENCY_TTL_S, NewRoom
from .errors import BadRequest, NotFound, RateLimited, TooLarge
from .model import ROOM_RE, Message
from .ratelimit import Budget, RateLimiter
from .redis_keys import key_used_in, name_key
from .sessions import User, keep_name
from .wire import parse_json

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


async def post(
    app: web.Application,
    room: str,
    user: User,
    text: Any,
    *,
    address: str,
    idempotency_key: str | None = None,
    arrived: float | None = None,
) -> tuple[Message, bool]:
    """Store a message in the room once it passes every check; raises a ChatError otherwise.

    A message comes out of its user's budget and its client address's (one
    round trip for both): a client can make as many users as it likes, but
    it has one address (``address`` is its budget key).

    Returns the message, and True when it is not new: ``idempotency_key``
    named a message the user already posted (within ten minutes, in this
    room or another), which is returned instead of storing another. Such a retry
    costs nothing from the budgets: it is answered even when they are
    spent, and what it took from them is given back.

    ``arrived`` (``time.monotonic()``) is when the request or frame came
    in: a stored message's publish latency is counted from it.
    """
    if arrived is None:
        arrived = time.monotonic()
    config = app[keys.CONFIG]
    text = message_text(text, config.message_max_chars)
    broker = app[keys.BROKER]
    limiter = app[keys.RATE_LIMITER]
    budgets = app[keys.BUDGETS]
    charges = ((budgets.messages, user.user_id), (budgets.address_messages, address))
    # The name, and the room a key was first used in, go with the budgets:
    # no round trip of their own.
    redis = app[keys.REDIS]
    pipe = redis.pipeline(transaction=False)
    if user.name is None:
        pipe.get(name_key(user.user_id))
    if idempotency_key is not None:
        used = key_used_in(user.user_id, idempotency_key)
        pipe.set(used, room, nx=True, ex=IDEMPOTENCY_TTL_S)
        pipe.get(used)
    read, replies = await scripts.run_after(redis, pipe, *limiter.calls(*charges))
    retry_after = limiter.verdict(charges, replies)
    if idempotency_key is not None:
        first_room = str(read[-1] or room)
        first = await _first_sent_with(
            app, idempotency_key, user.user_id, room, first_room, bool(retry_after), charges
        )
        if first is not None:
            return first, True
    if retry_after:
        raise RateLimited("too many messages; slow down", retry_after=retry_after)
    name = user.name
    if name is None:  # (a key Redis lost: the session outlived it)
        name = str(read[0]) if read[0] is not None else await keep_name(redis, user.user_id, None)
    try:
        message, stored = await broker.publish_once(
            room, user.user_id, name, text, idempotency_key, may_create=False
        )
    except NewRoom:
        # A room with no history is a new room: its address has a budget of those.
        retry_after = await limiter.take((budgets.address_rooms, address))
        if retry_after:
            raise RateLimited(
                "too many new rooms from this address; slow down", retry_after=retry_after
            ) from None
        message, stored = await broker.publish_once(room, user.user_id, name, text, idempotency_key)
    if stored:
        app[keys.METRICS].published(time.monotonic() - arrived)
        return message, False
    await _refund(limiter, charges)
    return message, True


async def _first_sent_with(
    app: web.Application,
    key: str,
    user_id: str,
    room: str,
    first_room: str,
    refused: bool,
    charges: tuple[tuple[Budget, str], ...],
) -> Message | None:
    """The message first sent with ``key``, when this is a retry of it sent
    to another room than ``first_room``, or one refused by the budgets (a
    retry to the same room is found by the publish script). One more read,
    for those only."""
    if first_room == room and not refused:
        return None
    first = await app[keys.BROKER].published_with(first_room, user_id, key)
    if first is not None:
        if not refused:
            await _refund(app[keys.RATE_LIMITER], charges)
        return first
    if not refused:  # (refused where it went first: the key is this room's now)
        await app[keys.REDIS].set(key_used_in(user_id, key), room, ex=IDEMPOTENCY_TTL_S)
    return None


async def _refund(limiter: RateLimiter, charges: tuple[tuple[Budget, str], ...]) -> None:
    """A retry: the message was stored before, and answered now, so what it
    just took from the budgets goes back (one more round trip, retries only)."""
    try:
        await limiter.refund(*charges)
    except redisurl.FAILURES as exc:
        log.debug("budgets not refunded for a retry: %s", exc)
