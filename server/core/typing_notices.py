"""Typing notices: the event the others in a room get, and what a worker
remembers of recent ones.

A notice is live only: no id, never stored in the room's history, never
replayed. Each user's notices in a room are coalesced to at most one per
:data:`WINDOW_S`. Redis decides that for every worker (see
:mod:`server.store.typing_store`); :class:`Recent` lets a worker drop a
repeat it already knows to be within the window without asking Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .model import Event
from .wire import to_json

WINDOW_S = 2.0  # at most one notice per user per room in this long
RECENT_MAX = 10_000  # (room, user) pairs a worker remembers


class TypingNotice(Event):
    """``user_id`` is typing: SSE ``event: typing`` (no ``id:``, not a message
    to resume from), WebSocket ``{"type": "typing", "user_id", "name"}``."""

    def __init__(self, user_id: str, name: str) -> None:
        self.user_id = user_id
        data = to_json({"user_id": user_id, "name": name})
        self.sse_frame = f"event: typing\ndata: {data}\n\n".encode()
        self.ws_frame = ('{"type":"typing",' + data[1:]).encode()


class Recent:
    """When each user's next notice in each room may be sent, as this worker
    knows it (from its own sends and the notices it relayed).

    Only an economy: forgetting an entry costs a round trip to Redis, which
    still drops the repeat. So the map is bounded: when full, entries past
    their time go, then the oldest.
    """

    __slots__ = ("_clock", "_max", "_until")

    def __init__(
        self, max_entries: int = RECENT_MAX, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._clock = clock
        self._until: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def due(self, room: str, user_id: str) -> bool:
        """Whether a notice of the user in the room may be due (Redis decides)."""
        until = self._until.get((room, user_id))
        return until is None or until <= self._clock()

    def hold(self, room: str, user_id: str, for_s: float = WINDOW_S) -> None:
        """No notice of the user in the room for ``for_s`` seconds from now."""
        key = (room, user_id)
        until = self._until
        until.pop(key, None)  # (re-inserted last: the dict stays oldest first)
        if len(until) >= self._max:
            self._trim()
        until[key] = self._clock() + for_s

    def release(self, room: str, user_id: str) -> None:
        """Forget the user's hold in the room (its notice was not sent after all)."""
        self._until.pop((room, user_id), None)

    def _trim(self) -> None:
        now = self._clock()
        kept = {key: when for key, when in self._until.items() if when > now}
        excess = len(kept) - self._max * 3 // 4
        if excess > 0:
            for key in list(kept)[:excess]:
                del kept[key]
        self._until = kept
