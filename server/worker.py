"""One worker process: its own event loop, Redis contexts, the app on the shared socket.

aiotools forks the workers from the main process. Each enters its Redis
client and session store concurrently (``aiotools.actxgroup``), serves the
app on the listening socket the main process created, runs the heartbeat
timer, and on the stop signal closes its streams (telling clients to
reconnect) and finishes in-flight requests, in the reverse order of setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiotools
from aiohttp import web
from redis.asyncio import Redis

from . import keys
from .app import create_app
from .config import Config
from .resources import redis_client, session_store
from .sessions import SignedRedisStorage
from .streams import RELOAD, SHUTDOWN

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Shared:
    """What the main process prepares once for every worker."""

    config: Config
    redis_url: str
    session_secret: str
    sock: socket.socket
    ready_fd: int  # write end of a pipe: each worker reports "ready <index> <pid>"


def _report_ready(fd: int, index: int) -> None:
    # OSError: the main process stopped listening; there is nobody to tell.
    with contextlib.suppress(OSError):
        os.write(fd, f"ready {index} {os.getpid()}\n".encode())


@aiotools.server_context
async def worker(
    loop: asyncio.AbstractEventLoop, pidx: int, args: Sequence[Any]
) -> AsyncGenerator[None, signal.Signals]:
    shared: Shared = args[0]
    config = shared.config
    group = aiotools.actxgroup(
        [
            redis_client(shared.redis_url),
            session_store(shared.redis_url, config, shared.session_secret),
        ]
    )
    async with group as (redis, storage):
        # actxgroup does not raise: a failed enter shows up as its result.
        for result in (redis, storage):
            if isinstance(result, BaseException):
                raise RuntimeError(f"worker {pidx} could not open Redis: {result}") from result
        assert isinstance(redis, Redis) and isinstance(storage, SignedRedisStorage)
        app = create_app(
            config,
            redis=redis,
            session_storage=storage,
            redis_url=shared.redis_url,
            worker_index=pidx,
        )
        runner = web.AppRunner(
            app,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=config.shutdown_timeout_s,
            access_log=logging.getLogger("aiohttp.access") if config.log_level == "debug" else None,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, shared.sock).start()
            heartbeat = aiotools.create_timer(app[keys.HEARTBEAT].tick, config.heartbeat_s)
            _report_ready(shared.ready_fd, pidx)
            try:
                stop_signal = yield
            finally:
                await aiotools.cancel_and_wait(heartbeat)
            # Tell streaming clients to reconnect (to the next generation of
            # workers on a reload) before waiting for in-flight requests.
            app[keys.HUB].close_all(RELOAD if stop_signal == signal.SIGHUP else SHUTDOWN)
        finally:
            await runner.cleanup()
    for state in group.exit_states():
        if isinstance(state, BaseException):
            log.warning("worker %d: error while closing Redis: %s", pidx, state)
