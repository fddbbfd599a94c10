"""Chat messages and the other events sent to subscribers, each encoded once per worker."""

from __future__ import annotations

import dataclasses
import re
from functools import cached_property
from typing import Any

from .ids import FIRST_ID, MessageId, parse_id
from .wire import sse_chunk, to_json, ws_text

ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

Online = list[dict[str, str]]  # a room's online users: {"user_id": ..., "name": ...}


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


class Presence(Event):
    """A room's presence snapshot: its online users (small rooms only) and their count."""

    def __init__(self, online: Online | None, count: int) -> None:
        self.online = online
        self.count = count
        body = {"online": online, "count": count} if online is not None else {"count": count}
        data = to_json(body)
        self.sse_frame = f"event: presence\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"presence",' + data[1:]).encode()


class PresenceDiff(Event):
    """What changed in a room's presence since the last snapshot or diff."""

    def __init__(self, joined: Online, left: Online, count: int) -> None:
        data = to_json({"joined": joined, "left": left, "count": count})
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
        data = to_json({"first_id": first_id})
        # No "id:" line: the client has not seen first_id yet, and its
        # Last-Event-ID must stay the last message it got.
        self.sse_frame = f"event: gap\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"gap",' + data[1:]).encode()


class AuthExpiring(Event):
    """The stream's sign-in expires at ``expires_at`` (Unix time): send a newer token."""

    def __init__(self, expires_at: float) -> None:
        data = to_json({"expires_at": int(expires_at) if expires_at.is_integer() else expires_at})
        self.sse_frame = f"event: auth_expiring\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"auth_expiring",' + data[1:]).encode()


class Ping(Event):
    """Asks the client to prove it is alive: an SSE comment, a WebSocket ping frame."""

    sse_frame = b": ping\n\n"
    ws_frame = b""

    @cached_property
    def ws_wire(self) -> bytes:
        return b"\x89\x00"  # FIN + ping, no payload


PING = Ping()


@dataclasses.dataclass(eq=False, repr=False)
class Message(Event):
    """One chat message; its fields do not change once it is handed on (the
    one exception: a history read fills in ``prev`` of a message stored
    before messages kept it, before anyone else sees the message).

    Every subscriber of a worker is written the very same ``sse_frame`` or
    ``ws_frame`` bytes: a message is encoded once, however many read it.

    ``prev`` is the id of the message stored just before it in the room
    (``(0, 0)`` for the first of the room's history), None when unknown. A
    message whose ``prev`` is newer than what a client last saw tells that
    messages in between are gone. It is not part of the message's JSON.
    """

    id: str
    room: str
    user_id: str
    name: str
    text: str
    ts: float
    prev: MessageId | None = None
    # When its text was last edited (a history read gives the latest text).
    edited: float | None = None
    # The id parsed, for comparing: where the message stands in its room's stream.
    parsed_id: MessageId = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.parsed_id = parse_id(self.id) or FIRST_ID

    @classmethod
    def from_fields(cls, room: str, id: Any, fields: Any) -> Message:
        """Build from a stream entry read by a client with ``decode_responses=True``:
        a message, or an :class:`Edit` or a :class:`Deletion` of one (field ``k``)."""
        edited = fields.get("e")
        common: dict[str, Any] = {
            "id": id,
            "room": room,
            "user_id": fields.get("u", ""),
            "name": fields.get("n", ""),
            "text": fields.get("t", ""),
            "ts": float(fields.get("ts", "0") or 0),
            # Entries stored before ids of predecessors were kept have no "p".
            "prev": parse_id(fields.get("p") or ""),
            "edited": float(edited) if edited else None,
        }
        kind = fields.get("k")
        if kind == EDIT:
            return Edit(**common, target=fields.get("r", ""))
        if kind == DELETION:
            return Deletion(**common, target=fields.get("r", ""))
        return cls(**common)

    def to_dict(self) -> dict[str, Any]:
        body = {
            "id": self.id,
            "room": self.room,
            "user_id": self.user_id,
            "name": self.name,
            "text": self.text,
            "ts": self.ts,
        }
        if self.edited is not None:
            body["edited"] = self.edited
        return body

    @cached_property
    def gap(self) -> Gap:
        """The notice that messages before this one are gone, encoded once per worker."""
        return Gap(self.id)

    @cached_property
    def json(self) -> str:
        return to_json(self.to_dict())

    @cached_property
    def sse_frame(self) -> bytes:  # type: ignore[override]
        # json.dumps never emits a raw newline, so the data fits one line.
        return f"event: message\nid: {self.id}\ndata: {self.json}\n\n".encode()

    @cached_property
    def ws_frame(self) -> bytes:  # type: ignore[override]
        return f'{{"type":"message","message":{self.json}}}'.encode()

    def __repr__(self) -> str:
        return f"Message({self.room!r}, {self.id!r})"


# The kinds of stream entries that change a message (field "k"; see server.store.edits).
EDIT = "e"
DELETION = "d"


@dataclasses.dataclass(eq=False, repr=False)
class Change(Message):
    """A stream entry that changes an earlier message, ``target``.

    It travels like a message: its own ``id`` and ``prev`` place it in the
    room's stream (live delivery, resume and gap notices work on those), so
    a client that resumes gets it in order with everything else. Only its
    wire forms differ.
    """

    target: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.room!r}, {self.id!r}, of={self.target!r})"


@dataclasses.dataclass(eq=False, repr=False)
class Edit(Change):
    """The target's new text: sent as the whole message, with ``edited``.

    SSE ``event: message_updated`` with ``id:`` this entry's id (what a
    client resumes from); WebSocket ``{"type": "message_updated",
    "event_id", "message"}``.
    """

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "id": self.target}

    @cached_property
    def sse_frame(self) -> bytes:  # type: ignore[override]
        return f"event: message_updated\nid: {self.id}\ndata: {self.json}\n\n".encode()

    @cached_property
    def ws_frame(self) -> bytes:  # type: ignore[override]
        head = to_json({"type": "message_updated", "event_id": self.id})[:-1]
        return f'{head},"message":{self.json}}}'.encode()


@dataclasses.dataclass(eq=False, repr=False)
class Deletion(Change):
    """The target is deleted: SSE ``event: message_deleted`` ``{"id"}`` (with
    ``id:`` this entry's id); WebSocket ``{"type": "message_deleted",
    "event_id", "id"}``."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.target}

    @cached_property
    def sse_frame(self) -> bytes:  # type: ignore[override]
        return f"event: message_deleted\nid: {self.id}\ndata: {self.json}\n\n".encode()

    @cached_property
    def ws_frame(self) -> bytes:  # type: ignore[override]
        return to_json({"type": "message_deleted", "event_id": self.id, "id": self.target}).encode()
