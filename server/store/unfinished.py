"""Work that runs to its end whatever happens to whoever started it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Unfinished:
    """Tasks started by :meth:`start`, until they are done; :meth:`wait` for them all.

    A request cancelled while it undoes what it did (its client hung up)
    must not leave the undoing half done: the undoing runs as a task of its
    own, which the request awaits through :func:`asyncio.shield`.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        # (Read here too: whoever started it may have stopped waiting for it.)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("unfinished work failed: %s", exc)

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
