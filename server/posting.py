"""Posting a message, the same for HTTP and WebSocket: validate, rate-limit, store."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import keys
from .errors import BadRequest, NotFound, RateLimited, TooLarge
from .model import ROOM_RE, Message, parse_json
from .sessions import User


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


async def post(app: web.Application, room: str, user: User, text: Any, *, address: str) -> Message:
    """Store a message in the room once it passes every check; raises a ChatError otherwise.

    A message comes out of its user's budget and its client address's (one
    round trip for both): a client can make as many users as it likes, but
    it has one address (``address`` is its budget key).
    """
    config = app[keys.CONFIG]
    text = message_text(text, config.message_max_chars)
    budgets = app[keys.BUDGETS]
    retry_after = await app[keys.RATE_LIMITER].take(
        (budgets.messages, user.user_id), (budgets.address_messages, address)
    )
    if retry_after:
        raise RateLimited("too many messages; slow down", retry_after=retry_after)
    message = await app[keys.BROKER].publish(room, user.user_id, user.name, text)
    app[keys.METRICS].published += 1
    return message
