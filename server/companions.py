"""Processes the main process keeps running beside the workers: the embedded Redis.

Each is watched through a pidfd on the main loop while a generation of
workers runs; one that exits is started again at once, and after a
backoff while it keeps failing to start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .workers import Backoff

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
        self._pidfds: dict[int, int] = {}  # index in companions -> pidfd
        self._later: Later = lambda delay, start: None
        self._stopping: Callable[[], bool] = lambda: False

    def watch(self, later: Later, stopping: Callable[[], bool]) -> None:
        """Watch every companion on the running loop: ``later`` schedules a
        start within the generation; none is started while ``stopping()``."""
        self._later, self._stopping = later, stopping
        for index in range(len(self.companions)):
            self._watch(index)

    def unwatch(self) -> None:
        for index in list(self._pidfds):
            self._unwatch(index)

    def _watch(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        companion = self.companions[index]
        if not companion.running():  # (died between generations, or failed to start)
            loop.call_soon(self._exited, index)
            return
        # Not reaped while it runs: its pid is its own.
        pidfd = os.pidfd_open(companion.pid)
        self._pidfds[index] = pidfd
        loop.add_reader(pidfd, self._exited, index)

    def _unwatch(self, index: int) -> None:
        pidfd = self._pidfds.pop(index, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    def _exited(self, index: int) -> None:
        """Start it again: at once, then after longer waits while it keeps dying."""
        self._unwatch(index)
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
