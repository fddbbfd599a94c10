"""Chat messages and stream ids, with each wire encoding computed once."""

from __future__ import annotations

import json
import re
import struct
from functools import cached_property
from typing import Any

ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# ASCII digits only: \d would take other scripts' digits, which Redis refuses.
_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
LAST_KEY = (2**64 - 1, 2**64 - 1)  # no id can follow it
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


def sse_chunk(frame: bytes) -> bytes:
    """An SSE frame as one chunk of a chunked HTTP response, ready for ``transport.write``."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def ws_text(payload: bytes) -> bytes:
    """A whole WebSocket text frame as a server sends it.

    Server frames are not masked (RFC 6455, 5.1), so the same bytes can be
    written to every connection that did not negotiate compression.
    """
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Event:
    """Something sent to every subscriber of a room, encoded once per worker.

    Subclasses set ``sse_frame`` (an SSE event) and ``ws_frame`` (a WebSocket
    text payload); the wire forms below are derived from them on first use.
    """

    sse_frame: bytes
    ws_frame: bytes

    @cached_property
    def sse_chunk(self) -> bytes:
        return sse_chunk(self.sse_frame)

    @cached_property
    def ws_wire(self) -> bytes:
        return ws_text(self.ws_frame)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Presence(Event):
    """A room's presence snapshot: its online users (small rooms only) and their count."""

    def __init__(self, online: list[dict[str, str]] | None, count: int) -> None:
        self.online = online
        self.count = count
        body = {"online": online, "count": count} if online is not None else {"count": count}
        data = _json(body)
        self.sse_frame = f"event: presence\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"presence",' + data[1:]).encode()


class PresenceDiff(Event):
    """What changed in a room's presence since the last snapshot or diff."""

    def __init__(
        self, joined: list[dict[str, str]], left: list[dict[str, str]], count: int
    ) -> None:
        data = _json({"joined": joined, "left": left, "count": count})
        self.sse_frame = f"event: presence_diff\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"presence_diff",' + data[1:]).encode()


class Gap(Event):
    """Messages the client has not seen are gone; the next one it gets is ``first_id``.

    Sent before that message, when the room's history no longer holds
    everything between what the client last saw and it (trimmed away, the
    room expired, or Redis lost it), so the client is never left to believe
    it saw everything.
    """

    def __init__(self, first_id: str) -> None:
        self.first_id = first_id
        data = _json({"first_id": first_id})
        # No "id:" line: the client has not seen first_id yet, and its
        # Last-Event-ID must stay the last message it got.
        self.sse_frame = f"event: gap\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"gap",' + data[1:]).encode()


class Ping(Event):
    """Asks the client to prove it is alive: an SSE comment, a WebSocket ping frame."""

    sse_frame = b": ping\n\n"
    ws_frame = b""

    @cached_property
    def ws_wire(self) -> bytes:
        return b"\x89\x00"  # FIN + ping, no payload


PING = Ping()


class Message(Event):
    """One chat message; immutable once built.

    Every subscriber of a worker is written the very same ``sse_frame`` or
    ``ws_frame`` bytes: a message is encoded once, however many read it.

    ``prev`` is the id of the message stored just before it in the room
    (``(0, 0)`` for the first of the room's history), None when unknown. A
    message whose ``prev`` is newer than what a client last saw tells that
    messages in between are gone. It is not part of the message's JSON.
    """

    def __init__(
        self,
        id: str,
        room: str,
        user_id: str,
        name: str,
        text: str,
        ts: float,
        prev: StreamKey | None = None,
    ) -> None:
        self.id = id
        self.key: StreamKey = parse_id(id) or (0, 0)
        self.prev = prev
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
            # Entries stored before ids of predecessors were kept have no "p".
            prev=parse_id(fields.get("p") or ""),
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
    def gap(self) -> Gap:
        """The notice that messages before this one are gone, encoded once per worker."""
        return Gap(self.id)

    @cached_property
    def json(self) -> str:
        return _json(self.to_dict())

    @cached_property
    def sse_frame(self) -> bytes:  # type: ignore[override]
        # json.dumps never emits a raw newline, so the data fits one line.
        return f"event: message\nid: {self.id}\ndata: {self.json}\n\n".encode()

    @cached_property
    def ws_frame(self) -> bytes:  # type: ignore[override]
        return f'{{"type":"message","message":{self.json}}}'.encode()

    def __repr__(self) -> str:
        return f"Message({self.room!r}, {self.id!r})"
