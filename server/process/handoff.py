"""What crosses from the main process into a worker process.

A leaf, imported by the main process and by workers alike: it imports
none of the app. The worker entry point
(:func:`server.process.watch.worker_context`) imports :mod:`server.process.worker` (and
through it the whole app) only once it runs in the forked child. A reload therefore
runs freshly imported code in every new worker, while the main process and
its listening socket stay as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import setproctitle

from ..common.config import Config
from . import logs

# Stop signals of the workers, as aiotools delivers them. SIGHUP means "a
# new wave of workers is serving: go": stop accepting, close SSE and WebSocket
# connections over a window (:func:`drain_window`) with a reconnect hint
# (WebSocket 1012) rather than "going away" (1001), then exit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# On a reload, an old worker closes its streams over a window that grows
# with their number (each client comes back to the new workers): this many
# a second, within these bounds.
DRAIN_STREAMS_PER_S = 2000
DRAIN_MIN_S = 0.5
DRAIN_MAX_S = 15.0
# While the new workers do not accept the returning clients as fast as they
# come, an old worker waits before closing more, until this long after it
# began (then it closes the rest over at most the window: it is done within
# DRAIN_LATEST_S + DRAIN_MAX_S).
DRAIN_LATEST_S = 2 * DRAIN_MAX_S


def drain_window(streams: int) -> float:
    """The seconds an old worker spreads the closing of its ``streams`` over."""
    return min(DRAIN_MAX_S, max(DRAIN_MIN_S, streams / DRAIN_STREAMS_PER_S))


Runner = Callable[[Coroutine[Any, Any, None]], None]

# prometheus_client's switch to its multiprocess mode (values in files
# there), inherited by every worker.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What the main process prepares once for every worker."""

    config: Config
    redis_url: str
    session_secret: str
    sock: socket.socket
    main_pid: int  # a worker whose parent is no longer this one exits at once
    # Write end of a pipe to the main process:
    # "started|ready|delivering <index> <pid> <generation>".
    report_fd: int
    generation: int = 0  # how many sets of workers came before this one
    # The instance's metrics directory, where all its processes write their
    # metrics (see server.process.instance_metrics); "" for none.
    metrics_dir: str = ""

    @property
    def processes(self) -> int:
        """The processes of a generation: the workers, then (with a
        ``webhook_url``) the webhook deliverer, under the next index."""
        return self.config.workers + (1 if self.config.webhook_url else 0)

    def delivers(self, index: int) -> bool:
        """Whether ``index`` is the webhook deliverer's, not a serving worker's."""
        return index >= self.config.workers

    def name(self, index: int) -> str:
        """How the logs call the process of ``index``."""
        return "the webhook deliverer" if self.delivers(index) else f"worker {index}"


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket all workers accept on; created once, so reloads refuse nothing."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


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


def report(setup: WorkerSetup, state: str, index: int) -> None:
    # OSError: the main process is gone or stopped listening; nobody to tell.
    line = f"{state} {index} {os.getpid()} {setup.generation}\n"
    with contextlib.suppress(OSError):
        os.write(setup.report_fd, line.encode())
