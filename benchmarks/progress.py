"""The progress bar on stderr, and how late the load generator's own loop runs."""

from __future__ import annotations

import array
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last_draw = 0.0
        self._dirty = False

    def draw(self, label: str, fraction: float, detail: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and not force and now - self._last_draw < 2.0:
            return  # a log file gets a line every two seconds, not a flood
        self._last_draw = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + " " * (self.WIDTH - filled)
        line = f"{label:<20} [{bar}] {fraction * 100:3.0f}% {detail}"
        if self.tty:
            self.stream.write("\r" + line.ljust(110)[:130])
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
        self._dirty = False
        self._last_draw = 0.0

    def note(self, text: str) -> None:
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()


@contextlib.asynccontextmanager
async def showing(
    progress: Progress, state: Callable[[], tuple[str, float, str]]
) -> AsyncIterator[None]:
    """Redraw the bar from ``state()`` five times a second while the block runs."""

    async def loop() -> None:
        while True:
            progress.draw(*state())
            await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        progress.draw(*state(), force=True)
        progress.finish()


class LoopLag:
    """How late a 10 ms sleep of this process's event loop wakes up: a busy load generator."""

    def __init__(self) -> None:
        self.samples = array.array("d")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def run() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                self.samples.append(max(0.0, (time.perf_counter() - before - 0.01) * 1e3))

        self._task = asyncio.create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
