"""What the hub needs of the store behind it, and nothing more.

The hub knows nothing of Redis: it asks its backend to "watch room R from
id X" and to "unwatch R", and for two reads (the newest id, and the
messages after an id). The backend hands new messages back, in id order and
without gaps, through :meth:`server.core.hub.Hub.dispatch`.
"""

from __future__ import annotations

from typing import Protocol

from .ids import MessageId
from .model import Message


class Backend(Protocol):
    """Where messages come from: history reads, and live delivery per room."""

    async def last_id(self, room: str) -> MessageId:
        """The newest id in the room's history, ``(0, 0)`` when there is none."""

    async def read_after(self, room: str, after: MessageId, count: int) -> list[Message]:
        """Up to ``count`` messages with ids strictly greater than ``after``, oldest first.

        Each with its ``prev``: what was stored just before it, ``(0, 0)`` for
        the first of the room's history, None when the backend cannot tell.
        """

    def watch(self, room: str, after: MessageId) -> None:
        """Start handing the room's messages after ``after`` to the hub, in order, none missed.

        Live messages carry their ``prev``; one newer than the message handed
        before it says that what lies between is gone from the history.
        """

    def unwatch(self, room: str) -> None:
        """Stop delivering the room's messages."""

    # The errors a read raises when the store cannot be reached: a replay
    # that meets one ends its connection with a hint to come back.
    failures: tuple[type[BaseException], ...]
