"""One worker process: its Redis contexts, the app on the shared socket, the heartbeat.

Imported only inside worker processes (see :mod:`server.process.handoff`), so
that every generation of workers runs freshly imported code. Each
worker enters its Redis client and session store concurrently
(``aiotools.actxgroup``), serves the app on the listening socket the main
process created, runs the heartbeat timer, and when stopped closes its
SSE and WebSocket connections (telling clients to reconnect; on a reload,
spread over a window: see :func:`drain`) and finishes in-flight requests, in
the reverse order of setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, cast

import aiotools
from aiohttp import web
from redis.asyncio import Redis

from ..core.close_reason import RELOAD, SHUTDOWN
from ..core.hub import Hub
from ..store.clients import redis_client, session_store
from ..store.session_store import SignedRedisStorage
from ..web import state as keys
from ..web.aiohttp_compat import MalformedRequests
from ..web.app import create_app
from ..web.edge import Edge
from ..web.sockets import AcceptQueue
from .handoff import DRAIN_LATEST_S, WorkerSetup, die_with_parent, drain_window, report, title

log = logging.getLogger(__name__)

ACCEPTED_GRACE_S = 0.25
SIBLINGS_GRACE_S = 0.1


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
        console_opening: asyncio.Task[None] | None = None
        try:
            await edge.start()
            if config.monitor_port:
                console_opening = asyncio.create_task(
                    open_console(console, config.monitor_port, pidx, app)
                )
                await asyncio.sleep(0)  # (at once, when its ports are free)
            beat = app[keys.HEARTBEAT]
            heartbeat = aiotools.create_timer(beat.tick, beat.interval)
            report(setup, "ready", pidx)
            try:
                sig = yield
            finally:
                await aiotools.cancel_and_wait(heartbeat)
            await leave(sig, app[keys.HUB], edge, setup.sock, loop)
        finally:
            if console_opening is not None:
                await aiotools.cancel_and_wait(console_opening)
            console.close()
            await edge.stop()
            await runner.cleanup()
    for state in group.exit_states():
        if isinstance(state, BaseException):
            log.warning("worker %d: error while closing Redis: %s", pidx, state)


async def leave(
    sig: signal.Signals,
    hub: Hub,
    edge: Edge,
    sock: socket.socket,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Stop accepting (new connections reach the other workers); on a reload
    (SIGHUP: a new wave of workers serves), close the streams spread over a
    window (:func:`drain`) rather than all at once. The rest are closed (in
    on_shutdown) telling clients why."""
    queue = AcceptQueue(sock)  # (it still answers once this worker stops accepting)
    try:
        await edge.stop()
        if sig == signal.SIGHUP:
            await drain(hub, queue, loop)
    finally:
        queue.close()
    hub.stop_reason = RELOAD if sig == signal.SIGHUP else SHUTDOWN
    # Give connections this worker accepted a moment to send their request:
    # aiohttp's shutdown closes any connection that has not, and its client
    # would see a reset.
    await asyncio.sleep(ACCEPTED_GRACE_S)


async def drain(hub: Hub, queue: AcceptQueue, loop: asyncio.AbstractEventLoop) -> None:
    """Close this worker's streams over :func:`~server.process.handoff.drain_window`,
    with the reload's reconnect hint, waiting while the listening socket's
    queue is crowded (the new workers do not take the returning clients in as
    fast as they come: past its room, the kernel would drop them, and they
    would try again only a second or more later); SIGINT or SIGTERM
    meanwhile closes the rest at once (the worker stops)."""
    streams = sum(1 for _ in hub.subscriptions())
    window = drain_window(streams)
    log.info("closing %d streams over %.1f s", streams, window)
    cut_short = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, cut_short.set)
    # The other old workers, told at the same time, stop accepting meanwhile:
    # a client that comes back should not reach one of them.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SIBLINGS_GRACE_S):
            await cut_short.wait()
    await hub.close_spread(
        RELOAD, window, cut_short, crowded=queue.crowded, latest_s=DRAIN_LATEST_S
    )


MONITOR_PORTS = 3  # per worker: aiomonitor's terminal, web and Python console
CONSOLE_RETRY_S = 0.2


async def open_console(
    stack: contextlib.ExitStack, base_port: int, pidx: int, app: web.Application
) -> None:
    """:func:`live_console` on ``stack``, once its ports are free: during a
    reload the worker of the same index in the old wave holds them until it
    exits (aiomonitor would only log that it could not bind)."""
    ports = range(base_port + MONITOR_PORTS * pidx, base_port + MONITOR_PORTS * (pidx + 1))
    # (Nothing tells this process when another one lets go of a port: it looks.)
    while not all(port_free(port) for port in ports):  # noqa: ASYNC110
        await asyncio.sleep(CONSOLE_RETRY_S)
    stack.enter_context(live_console(base_port, pidx, app))


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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
