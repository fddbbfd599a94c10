"""Message ids: the one parser and formatter.

A message's id is the id Redis gave its entry in the room's stream,
``<ms>-<seq>``: two unsigned 64-bit numbers, compared as a pair. Every id
that comes from a client (``Last-Event-ID``, ``since``, ``before``), from
a stream entry or from a pub/sub notice is parsed here.
"""

from __future__ import annotations

import re

# ASCII digits only: \d would take other scripts' digits, which Redis refuses.
_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64_MAX = 2**64 - 1

MessageId = tuple[int, int]

FIRST_ID: MessageId = (0, 0)  # before any message: "the whole history"
LAST_ID: MessageId = (_U64_MAX, _U64_MAX)  # no id can follow it


def parse_id(value: str) -> MessageId | None:
    """Parse a message id (``ms-seq``, both parts given); None if malformed."""
    match = _ID_RE.fullmatch(value)
    if match is None:
        return None
    parsed = int(match.group(1)), int(match.group(2))
    # Redis ids are two unsigned 64-bit numbers; anything larger is refused by Redis.
    return parsed if max(parsed) <= _U64_MAX else None


def format_id(message_id: MessageId) -> str:
    return f"{message_id[0]}-{message_id[1]}"
