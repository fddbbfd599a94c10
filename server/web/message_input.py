"""What a client sends with a message, checked: its body, room, text and idempotency key."""

from __future__ import annotations

import re
from typing import Any

from ..core.errors import BadRequest, NotFound, TooLarge
from ..core.model import ROOM_RE
from ..core.wire import parse_json

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
