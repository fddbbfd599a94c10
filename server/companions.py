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

    def restart(self) -> None: ...


class Companions:
    def __init__(self, companions: Sequence[Companion], backoff: Backoff) -> None:
        self.companions = companions
        self.backoff = backoff
        self._pidfds: dict[int, int] = {}  # index in companions -> pidfd
        self._later: Later | None = None

    def watch(self, later: Later) -> None:
        """Watch every companion on the running loop; ``later`` schedules a
        retry within the generation."""
        self._later = later
        for index in range(len(self.companions)):
            self._watch(index)

    def unwatch(self) -> None:
        for index in list(self._pidfds):
            self._unwatch(index)

    def _watch(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.companions[index].pid)
        except ProcessLookupError:  # (reaped: gone already)
            loop.call_soon(self._exited, index)
            return
        self._pidfds[index] = pidfd
        loop.add_reader(pidfd, self._exited, index)

    def _unwatch(self, index: int) -> None:
        pidfd = self._pidfds.pop(index, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    def _exited(self, index: int) -> None:
        self._unwatch(index)
        companion = self.companions[index]
        log.warning("%s (pid %d) exited; starting it again", companion.name, companion.pid)
        try:
            companion.restart()
        except (RuntimeError, OSError) as exc:
            delay = self.backoff.failed(companion.name, time.monotonic())
            log.error("%s did not start: %s; trying again in %.0f s", companion.name, exc, delay)
            if self._later is not None:
                self._later(delay, lambda: self._exited(index))
            return
        self.backoff.succeeded(companion.name)
        log.info("%s is serving again (pid %d)", companion.name, companion.pid)
        self._watch(index)
