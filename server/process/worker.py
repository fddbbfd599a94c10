"""One worker process: its Redis contexts, the app on the shared socket, the heartbeat.

Imported only inside worker processes (see :mod:`server.process.handoff`), so
that every generation of workers runs freshly imported code. Each
worker enters its Redis client and session store concurrently
(``aiotools.actxgroup``), serves the app on the listening socket the main
process created, runs the heartbeat timer, and when stopped closes its
SSE and WebSocket connections (telling clients to reconnect) and finishes in-flight requests, in
the reverse order of setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, cast

import aiotools
from aiohttp import web
from redis.asyncio import Redis

from ..core.close_reason import RELOAD, SHUTDOWN
from ..store.clients import redis_client, session_store
from ..store.session_store import SignedRedisStorage
from ..web import state as keys
from ..web.aiohttp_compat import MalformedRequests
from ..web.app import create_app
from ..web.edge import Edge
from .handoff import WorkerSetup, die_with_parent, report, title

log = logging.getLogger(__name__)

ACCEPTED_GRACE_S = 0.25


@aiotools.server_context
async def worker(
    loop: asyncio.AbstractEventLoop, pidx: int, args: Sequence[Any]
) -> AsyncGenerator[None, signal.Signals]:
    """One worker process, in aiotools' shape: set up, ``sig = yield``, tear down.

    Set up: Redis client and session store (entered concurrently), the app
    on the shared socket, the heartbeat timer; then report "ready". Tear
    down, once a stop signal arrives, in the reverse order.
    """
    setup: WorkerSetup = args[0]
    title(f"worker {pidx}")
    die_with_parent(parent=setup.main_pid)
    report(setup, "started", pidx)
    config = setup.config
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    group = aiotools.actxgroup(
        [
            redis_client(setup.redis_url),
            session_store(setup.redis_url, config, setup.session_secret),
        ]
    )
    async with group as (redis, storage):
        # actxgroup does not raise: a failed enter shows up as its result.
        for result in (redis, storage):
            if isinstance(result, BaseException):
                raise RuntimeError(f"worker {pidx} could not open Redis: {result}") from result
        assert isinstance(storage, SignedRedisStorage)
        redis = cast(Redis, redis)  # or a RedisCluster: see server.store.clients
        app = create_app(
            config,
            redis=redis,
            session_storage=storage,
            redis_url=setup.redis_url,
            worker_index=pidx,
            metrics_dir=setup.metrics_dir or None,
        )
        runner = web.AppRunner(
            app,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=config.shutdown_timeout_s,
        )
        await runner.setup()
        metrics = app[keys.METRICS]
        edge = Edge(
            runner,
            setup.sock,
            config,
            access_log=logging.getLogger("aiohttp.access") if config.log_level == "debug" else None,
            refused=lambda: metrics.rate_limited("address_connections"),
        )
        console = contextlib.ExitStack()
        try:
            await edge.start()
            if config.monitor_port:
                console.enter_context(live_console(config.monitor_port, pidx, app))
            beat = app[keys.HEARTBEAT]
            heartbeat = aiotools.create_timer(beat.tick, beat.interval)
            report(setup, "ready", pidx)
            try:
                sig = yield
            finally:
                await aiotools.cancel_and_wait(heartbeat)
            # Connections are closed (in on_shutdown, after the worker stops
            # accepting) telling clients why: on a reload, to reconnect to
            # the next generation of workers.
            app[keys.HUB].stop_reason = RELOAD if sig == signal.SIGHUP else SHUTDOWN
            # Stop accepting, then give connections this worker accepted a
            # moment to send their request: aiohttp's shutdown closes any
            # connection that has not, and its client would see a reset.
            await edge.stop()
            await asyncio.sleep(ACCEPTED_GRACE_S)
        finally:
            console.close()
            await edge.stop()
            await runner.cleanup()
    for state in group.exit_states():
        if isinstance(state, BaseException):
            log.warning("worker %d: error while closing Redis: %s", pidx, state)


MONITOR_PORTS = 3  # per worker: aiomonitor's terminal, web and Python console


@contextlib.contextmanager
def live_console(base_port: int, pidx: int, app: web.Application) -> Iterator[None]:
    """aiomonitor on this worker's loop, on loopback only: worker ``i`` takes
    ports ``base + 3i`` (terminal: ``telnet 127.0.0.1 <port>``), ``+1`` (web)
    and ``+2`` (Python console, with ``app`` in scope)."""
    import aiomonitor  # noqa: PLC0415  (an optional dependency, checked at start)

    port = base_port + MONITOR_PORTS * pidx
    monitor = aiomonitor.start_monitor(
        asyncio.get_running_loop(),
        host="127.0.0.1",
        port=port,
        webui_port=port + 1,
        console_port=port + 2,
        locals={"app": app},
    )
    log.info("live console on 127.0.0.1:%d (web %d, Python %d)", port, port + 1, port + 2)
    try:
        yield
    finally:
        monitor.close()
