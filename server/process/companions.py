"""Processes the main process keeps running beside the workers: the embedded Redis.

Each is watched through a pidfd on the main loop while a generation of
workers runs; one that exits is started again at once, and after a
backoff while it keeps failing to start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .watch import Backoff, Exits

log = logging.getLogger("chat-server")

Later = Callable[[float, Callable[[], None]], None]  # call this in so many seconds


class Companion(Protocol):
    """A process started again when it dies."""

    name: str

    @property
    def pid(self) -> int: ...

    def running(self) -> bool: ...

    def restart(self) -> None: ...


class Companions:
    """The companions of one instance; watched while a generation runs."""

    def __init__(self, companions: Sequence[Companion], backoff: Backoff) -> None:
        self.companions = companions
        self.backoff = backoff
        self.exits = Exits()
        self._later: Later = lambda delay, start: None
        self._stopping: Callable[[], bool] = lambda: False

    def watch(self, later: Later, stopping: Callable[[], bool]) -> None:
        """Watch every companion on the running loop: ``later`` schedules a
        start within the generation; none is started while ``stopping()``."""
        self._later, self._stopping = later, stopping
        for index in range(len(self.companions)):
            self._watch(index)

    def unwatch(self) -> None:
        self.exits.unwatch_all()

    def _watch(self, index: int) -> None:
        companion = self.companions[index]
        # Not reaped while it runs: its pid is its own. (Not running: it died
        # between generations, or failed to start.)
        if not (companion.running() and self.exits.watch(companion.pid, self._exited, index)):
            asyncio.get_running_loop().call_soon(self._exited, index)

    def _exited(self, index: int) -> None:
        """Start it again: at once, then after longer waits while it keeps dying."""
        if self._stopping():
            return
        companion = self.companions[index]
        delay = self.backoff.failed(companion.name, time.monotonic())
        log.warning(
            "%s (pid %d) exited; starting it again%s",
            companion.name,
            companion.pid,
            f" in {delay:.1f} s" if delay else "",
        )
        if delay:
            self._later(delay, lambda: self._start(index))
        else:
            self._start(index)

    def _start(self, index: int) -> None:
        companion = self.companions[index]
        if self._stopping():
            return
        try:
            companion.restart()
        except (RuntimeError, OSError) as exc:
            log.error("%s did not start: %s", companion.name, exc)
            self._exited(index)
            return
        log.info("%s is serving again (pid %d)", companion.name, companion.pid)
        self._watch(index)
