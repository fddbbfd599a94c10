"""Chat messages and stream ids, with each wire encoding computed once."""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any

ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ID_RE = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_U64_MAX = 2**64 - 1

StreamKey = tuple[int, int]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """Strict JSON: NaN and Infinity (which Python accepts) are refused too.

    Raises ValueError, or RecursionError for absurdly deep nesting.
    """
    return json.loads(text, parse_constant=_no_constants)


def parse_id(value: str) -> StreamKey | None:
    """Parse a Redis stream id (``ms-seq`` or ``ms``); None if malformed."""
    match = _ID_RE.fullmatch(value)
    if match is None:
        return None
    key = int(match.group(1)), int(match.group(2) or 0)
    # Redis ids are two unsigned 64-bit numbers; anything larger is refused by Redis.
    return key if max(key) <= _U64_MAX else None


def format_id(key: StreamKey) -> str:
    return f"{key[0]}-{key[1]}"


class Message:
    """One chat message; immutable once built.

    Every subscriber of a worker is written the very same ``sse_frame`` or
    ``ws_frame`` bytes: a message is encoded once, however many read it.
    """

    def __init__(self, id: str, room: str, user_id: str, name: str, text: str, ts: float) -> None:
        self.id = id
        self.key: StreamKey = parse_id(id) or (0, 0)
        self.room = room
        self.user_id = user_id
        self.name = name
        self.text = text
        self.ts = ts

    @classmethod
    def from_fields(cls, room: str, id: Any, fields: Any) -> Message:
        """Build from a stream entry read by a client with ``decode_responses=True``."""
        return cls(
            id=id,
            room=room,
            user_id=fields.get("u", ""),
            name=fields.get("n", ""),
            text=fields.get("t", ""),
            ts=float(fields.get("ts", "0") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "room": self.room,
            "user_id": self.user_id,
            "name": self.name,
            "text": self.text,
            "ts": self.ts,
        }

    @cached_property
    def json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @cached_property
    def sse_frame(self) -> bytes:
        # json.dumps never emits a raw newline, so the data fits one line.
        return f"event: message\nid: {self.id}\ndata: {self.json}\n\n".encode()

    @cached_property
    def ws_frame(self) -> bytes:
        return f'{{"type":"message","message":{self.json}}}'.encode()

    def __repr__(self) -> str:
        return f"Message({self.room!r}, {self.id!r})"
