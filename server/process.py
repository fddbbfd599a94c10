"""What crosses from the main process into a worker process.

This module is imported by the main process, so it imports none of the
app: the worker entry point imports :mod:`server.worker` (and through it
the whole app) only once it runs in the forked child. A reload therefore
runs freshly imported code in every new worker, while the main process and
its listening socket stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Any

import aiotools
import setproctitle

from . import logs
from .config import Config

# Stop signals of the workers, as aiotools delivers them. SIGHUP means "a
# new generation replaces you": streams are closed with a reconnect hint
# (WebSocket 1012) rather than "going away" (1001).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Runner = Callable[[Coroutine[Any, Any, None]], None]

# prometheus_client's switch to its multiprocess mode (values in files
# there), inherited by every worker.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclasses.dataclass(frozen=True)
class Shared:
    """What the main process prepares once for every worker."""

    config: Config
    redis_url: str
    session_secret: str
    sock: socket.socket
    main_pid: int  # a worker whose parent is no longer this one exits at once
    # Write end of a pipe to the main process: "started|ready <index> <pid> <generation>".
    report_fd: int
    generation: int = 0  # how many sets of workers came before this one
    # The instance's metrics directory, where all its processes write their
    # metrics (see server.instance_metrics); "" for none.
    metrics_dir: str = ""


PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies.

    Workers (and the embedded Redis) must not outlive a main process that
    was killed with SIGKILL: they would keep the port and serve stale code.
    With ``parent``, a parent that died before the request was made is
    noticed too.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


def title(role: str) -> None:
    """Name this process in ``ps`` and ``top`` (``chat-server: worker 0`` and
    the like) and on its log lines."""
    setproctitle.setproctitle(f"chat-server: {role}")
    logs.set_role(role)


def report(shared: Shared, state: str, index: int) -> None:
    # OSError: the main process is gone or stopped listening; nobody to tell.
    line = f"{state} {index} {os.getpid()} {shared.generation}\n"
    with contextlib.suppress(OSError):
        os.write(shared.report_fd, line.encode())


@aiotools.server_context
async def worker(
    loop: asyncio.AbstractEventLoop, pidx: int, args: Sequence[Any]
) -> AsyncGenerator[None, signal.Signals]:
    """The aiotools worker: report, then run :func:`server.worker.serve` until stopped."""
    from . import worker as implementation  # noqa: PLC0415  (fresh code in every worker)

    shared: Shared = args[0]
    title(f"worker {pidx}")
    die_with_parent(parent=shared.main_pid)
    report(shared, "started", pidx)
    async with implementation.serve(pidx, shared) as stop:
        stop.signal = yield


def keeper(stop_event: Any, index: int, args: Sequence[Any]) -> None:
    """An aiotools extra process that only waits for the stop signal.

    aiotools ends a generation once every process it started has exited.
    Replacement workers are not its own, so after the last original worker
    died and was replaced, aiotools would stop a healthy server. The keeper
    outlives the workers until the supervisor stops it with them.
    """
    shared: Shared = args[0]
    # Forked from the main process' event loop, this process still holds its
    # signal wakeup descriptor: a signal here would also wake the main loop,
    # which would take it for a second signal of its own.
    signal.set_wakeup_fd(-1)
    title("keeper")
    die_with_parent(parent=shared.main_pid)
    report(shared, "keeper", index)
    # aiotools' handlers raise on the stop signals; that is the way out.
    with contextlib.suppress(SystemExit, KeyboardInterrupt, aiotools.InterruptedBySignal):
        while True:
            signal.pause()


def run_replacement(index: int, shared: Shared, runner: Runner) -> None:
    """Body of a worker that the main process starts to replace one that died.

    aiotools starts the first workers of a generation but never replaces
    one; this runs the same worker context the way aiotools does.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[signal.Signals] = loop.create_future()

        def on_signal(signum: signal.Signals) -> None:
            if not stopped.done():
                stopped.set_result(signum)

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        context = worker(loop, index, (shared,))
        async with context:
            context.yield_return = await stopped

    runner(main())
