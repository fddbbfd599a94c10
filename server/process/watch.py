"""The worker processes of one wave: who they are, when they die, their replacements.

A wave is one set of workers, one per index, running one configuration:
the first is started by aiotools, every later one (a reload) is forked
here, as a replacement would be (:meth:`WorkerProcesses.start`). The
supervisor (:mod:`server.process.supervisor`) learns each worker's pid from its
"started" report and hands it here. Each pid is watched through a pidfd on
the main process' event loop: it becomes readable when the process exits,
so a death is an event, not something polled for. A worker that dies
while the generation runs is replaced with the same index, at once the
first time and after a growing delay when that index keeps dying
(:class:`Backoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from .handoff import STOP_SIGNALS, Runner, WorkerSetup
from .workarounds import run_replacement

if TYPE_CHECKING:  # imported by the main process once the metrics directory is set
    from .instance_metrics import InstanceMetrics

log = logging.getLogger("chat-server")


def worker_context(loop: asyncio.AbstractEventLoop, pidx: int, args: Sequence[Any]) -> Any:
    """aiotools' worker context, :func:`server.process.worker.worker` (or, for
    the index after the workers', :func:`server.process.delivery.deliverer`),
    imported only here, in the child process: every generation runs freshly
    imported code, while the main process never loads the app."""
    setup: WorkerSetup = args[0]
    if setup.delivers(pidx):
        from . import delivery  # noqa: PLC0415

        return delivery.deliverer(loop, pidx, args)
    from . import worker  # noqa: PLC0415

    return worker.worker(loop, pidx, args)


class Backoff:
    """How long to wait before trying again something that keeps failing.

    Nothing the first time, then longer for each failure within a minute
    of the previous ones.
    """

    SCHEDULE_S = (0.0, 0.5, 1.0, 2.0, 5.0)
    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._failures: dict[Hashable, list[float]] = {}

    def failed(self, what: Hashable, now: float) -> float:
        """Count a failure of ``what``; the seconds to wait before its next try."""
        recent = [t for t in self._failures.get(what, []) if now - t < self.WINDOW_S]
        self._failures[what] = [*recent, now]
        return self.SCHEDULE_S[min(len(recent), len(self.SCHEDULE_S) - 1)]

    def succeeded(self, what: Hashable) -> None:
        self._failures.pop(what, None)


def wait_blocked(delay: float) -> bool:
    """Sleep with the stop signals blocked; stop at once if one arrives.

    True if a SIGHUP came meanwhile: the settings are to be read again.
    """
    if delay <= 0:
        return False
    received = signal.sigtimedwait(STOP_SIGNALS, delay)
    if received is not None and received.si_signo != signal.SIGHUP:
        raise SystemExit(0)
    return received is not None


class Exits:
    """Processes watched for their exit through a pidfd on the running loop
    (readable once the process has exited): an event, not a poll."""

    def __init__(self) -> None:
        self._pidfds: dict[int, int] = {}  # pid -> its pidfd

    def watch(self, pid: int, on_exit: Callable[..., None], *args: Any) -> bool:
        """Call ``on_exit(*args)`` once ``pid`` has exited (the watch ends
        then); False, and no watch, when it is gone already."""
        if pid in self._pidfds:
            return True
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self._pidfds[pid] = pidfd
        asyncio.get_running_loop().add_reader(pidfd, self._exited, pid, on_exit, args)
        return True

    def watching(self, pid: int) -> bool:
        return pid in self._pidfds

    def unwatch(self, pid: int) -> None:
        pidfd = self._pidfds.pop(pid, None)
        if pidfd is not None:
            asyncio.get_running_loop().remove_reader(pidfd)
            os.close(pidfd)

    def unwatch_all(self) -> None:
        for pid in list(self._pidfds):
            self.unwatch(pid)

    def _exited(self, pid: int, on_exit: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.unwatch(pid)
        on_exit(*args)


class Timers:
    """Callbacks due later on the running loop, cancelled together."""

    def __init__(self) -> None:
        self._timers: list[asyncio.TimerHandle] = []

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay`` seconds, unless :meth:`cancel` comes first."""
        loop = asyncio.get_running_loop()
        now = loop.time()  # (timers that fired already need no cancelling)
        self._timers = [t for t in self._timers if t.when() > now and not t.cancelled()]
        self._timers.append(loop.call_later(delay, callback))

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers = []


class WorkerProcesses:
    """One wave's worker processes, by index."""

    def __init__(
        self, setup: WorkerSetup, runner: Runner, backoff: Backoff, metrics: InstanceMetrics
    ) -> None:
        self.setup = setup
        self.runner = runner
        self.backoff = backoff
        self.metrics = metrics
        self.pids: dict[int, int] = {}  # worker index -> pid of the process serving it
        self.replacing = True  # False once the wave is stopping (or not yet serving)
        self.told: signal.Signals | None = None  # the signal the wave was told to stop with
        self.ready: set[int] = set()  # indexes whose worker reported "ready"
        self.announced = False  # every index was ready once
        self.replacements: dict[int, multiprocessing.process.BaseProcess] = {}
        self.on_death: Callable[[int], None] = lambda index: None
        self.exits = Exits()
        self.reported: set[int] = set()  # pids whose death was logged (and replaced)
        self._timers = Timers()
        self._suspended: dict[int, int] = {}  # index -> pid, of those running at suspend()

    @property
    def generation(self) -> int:
        return self.setup.generation

    def start(self, count: int) -> None:
        """Fork a worker for each index below ``count`` (a reload's new wave)."""
        for index in range(count):
            self._fork(index)

    def started(self, index: int, pid: int) -> None:
        """``pid`` serves ``index`` now: learn of its exit from its pidfd."""
        self.pids[index] = pid
        if not self.exits.watch(pid, self._died, index, pid):
            self._died(index, pid)  # gone already

    def alive(self, pid: int) -> bool:
        return self.exits.watching(pid)

    def all_exited(self) -> bool:
        return not any(self.alive(pid) for pid in self.pids.values())

    def signal_all(self, signum: signal.Signals) -> None:
        self.told = signum
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def suspend(self) -> None:
        """Let go of the running loop (it ends) while the processes run on;
        :meth:`resume` on the next. Until then, :meth:`alive` knows nothing."""
        self._suspended = {i: pid for i, pid in self.pids.items() if self.alive(pid)}
        self._timers.cancel()
        self.exits.unwatch_all()

    def resume(self) -> None:
        """Watch again, on this loop, the processes that ran at :meth:`suspend`:
        those that exited meanwhile are taken for dead now."""
        suspended, self._suspended = self._suspended, {}
        for index, pid in suspended.items():
            self.started(index, pid)

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``delay`` seconds, unless the wave ends first."""
        self._timers.later(delay, callback)

    def kill_stragglers(self) -> None:
        for index, pid in list(self.pids.items()):
            if self.alive(pid):
                name = self.setup.name(index)
                log.warning("%s (pid %d) did not stop in time; killing it", name, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def close(self, timeout: float) -> None:
        """The wave is over: stop watching, and wait for the processes forked
        here (aiotools waits for its own workers), killing those that hang."""
        self._timers.cancel()
        self.exits.unwatch_all()
        deadline = time.monotonic() + timeout
        for process in self.replacements.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("replacement worker %s did not stop; killing it", process.pid)
                process.kill()
                process.join(1)
            with contextlib.suppress(ValueError):
                process.close()
        # Every worker of this wave has exited.
        self.metrics.workers_stopped(self.pids.values())

    # -- deaths ------------------------------------------------------------

    def _died(self, index: int, pid: int) -> None:
        if self.pids.get(index) != pid:
            return  # an earlier process of this index
        # At once, even while backing off: the dead worker's connections
        # leave the gauges now.
        self.metrics.worker_died(pid)
        self.ready.discard(index)
        self.on_death(index)
        if not self.replacing:
            return
        delay = self.backoff.failed(index, time.monotonic())
        log.warning("%s (pid %d) died; starting a replacement", self.setup.name(index), pid)
        self.reported.add(pid)
        if delay:
            self.later(delay, lambda: self._replace(index, pid))
        else:
            self._replace(index, pid)

    def _replace(self, index: int, pid: int) -> None:
        if not self.replacing or self.pids.get(index) != pid:
            return
        try:
            self._fork(index)
        except Exception:  # (a fork that failed: out of memory, process limit)
            log.exception("could not replace %s; trying again", self.setup.name(index))
            delay = self.backoff.failed(index, time.monotonic()) or 0.5
            self.later(delay, lambda: self._replace(index, pid))
            return
        self.metrics.worker_replaced()

    def _fork(self, index: int) -> None:
        process = self._start_replacement(index)
        old = self.replacements.pop(index, None)
        if old is not None:
            old.join(0)
            with contextlib.suppress(ValueError):
                old.close()
        self.replacements[index] = process
        assert process.pid is not None
        self.started(index, process.pid)

    def _start_replacement(self, index: int) -> multiprocessing.process.BaseProcess:
        process = multiprocessing.get_context("fork").Process(
            target=run_replacement,
            args=(worker_context, index, self.setup, self.runner),
            name=f"chat-worker-{index}",
        )
        # The child starts with the stop signals blocked, and unblocks them
        # once its own handlers are in place: until then a signal would reach
        # this process' handlers through the inherited wakeup fd.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return process
