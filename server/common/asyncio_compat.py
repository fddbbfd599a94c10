"""A fix of Python 3.11's ``asyncio.wait_for``, in one place.

On Python 3.11, ``asyncio.wait_for`` runs the awaited work in a task of its
own; when the caller is cancelled just as that task finishes, it returns the
task's result and drops the cancellation (CPython gh-86296; Python 3.12
rebuilt ``wait_for`` on ``asyncio.timeout`` and fixed it). redis-py 8 writes
every command under ``wait_for`` when the connection has a socket timeout
(ours have), so any task cancelled during a Redis call could go on as if
nothing had happened: a loop that should stop runs forever, and a stop that
waits for it hangs. ``tests/test_compat_redis.py`` shows it: a cancellation
during a Redis call is dropped without :func:`install`, never with it.

:func:`install` gives Python 3.11 the ``wait_for`` of Python 3.12 (the work
runs in the caller's task, under ``asyncio.timeout``); on 3.12 and later it
does nothing. It is installed where Redis clients are made
(:mod:`server.store.clients`), so every process that talks to Redis has it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

FIXED_IN = (3, 12)
ORIGINAL = asyncio.wait_for  # the one this Python came with (the test that shows the fix is needed)


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (its signature)
    """``asyncio.wait_for`` as Python 3.12 has it."""
    if timeout is not None and timeout <= 0:
        task = asyncio.ensure_future(fut)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait([task])
        try:
            return task.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut


def needed() -> bool:
    return sys.version_info < FIXED_IN


def install() -> None:
    """Replace ``asyncio.wait_for`` with :func:`wait_for` where it is needed."""
    if needed():
        asyncio.wait_for = wait_for  # type: ignore[assignment]
        asyncio.tasks.wait_for = wait_for  # type: ignore[assignment]
