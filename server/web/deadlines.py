"""One timer per worker for the connections that owe something by a deadline.

A connection is watched only while something of it is due (headers, a
body, an answer its client is not taking): see :mod:`server.web.edge`. Each
sweep asks every watched connection to act on what is overdue, and lets go
of those that owe nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Timed(Protocol):
    def overdue(self, now: float) -> bool:
        """Act on the deadlines that passed by ``now`` (loop time); False once nothing is due."""
        ...


class Deadlines:
    """One timer per worker that acts on the connections whose deadlines passed.

    ``timeout_s`` is how long a request's headers and body may take,
    ``send_timeout_s`` how long an answer may make no progress.
    """

    def __init__(self, timeout_s: float, send_timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.send_timeout_s = send_timeout_s
        # A deadline is acted on at most this late.
        self.interval_s = min(1.0, timeout_s / 4, send_timeout_s / 4)
        self._due: set[Timed] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, connection: Timed) -> None:
        self._due.add(connection)

    def forget(self, connection: Timed) -> None:
        self._due.discard(connection)

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            now = loop.time()
            for connection in list(self._due):
                if not connection.overdue(now):
                    self._due.discard(connection)
        finally:
            self._handle = loop.call_later(self.interval_s, self._sweep)
