"""The main process while workers run: signals, reloads, and replacing dead workers.

aiotools starts a generation of workers and forwards stop signals, but has
no reload and never replaces a worker that dies. The supervisor fills both
gaps from inside aiotools' main context (which runs on the main process'
event loop):

- SIGINT/SIGTERM: stop every worker (each tells its clients to reconnect).
- SIGHUP: read the settings again; if they are valid, stop this generation
  with SIGHUP so that the caller starts a new one on the same listening
  socket (connections wait in its backlog meanwhile: none is refused). If
  they are not, log one line and keep the current workers.
- A worker that dies is replaced within a fraction of a second, with the
  same index; the others keep serving.

Workers report "started" and "ready" with their pid through a pipe, so the
supervisor knows every worker process, including its own replacements, and
the keeper (see :func:`server.process.keeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

from .config import Config, ConfigError
from .process import STOP_SIGNALS, Runner, Shared, run_replacement

if TYPE_CHECKING:  # imported by the main process once the metrics directory is set
    from .instance_metrics import InstanceMetrics

log = logging.getLogger("chat-server")

WATCH_INTERVAL_S = 0.1
RESPAWN_BACKOFF_S = (0.0, 0.5, 1.0, 2.0, 5.0)


class Action(enum.Enum):
    STOP = "stop"  # SIGINT or SIGTERM
    RELOAD = "reload"  # SIGHUP with valid settings
    RESTART = "restart"  # every process aiotools started has died, keeper included


class _QuietAllChildrenGone(logging.Filter):
    """aiotools warns when all its workers have exited; here that is how every
    stop and reload ends, so the warning would only be noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "All child processes have terminated" not in record.getMessage()


class Supervisor:
    def __init__(
        self,
        shared: Shared,
        read_fd: int,
        runner: Runner,
        reload_config: Callable[[], Config],
        on_ready: Callable[[Config], None],
        deaths: dict[int, list[float]],
        metrics: InstanceMetrics,
    ) -> None:
        self.shared = shared
        self.metrics = metrics
        self.config = shared.config
        self.read_fd = read_fd
        self.runner = runner
        self.reload_config = reload_config
        self.on_ready = on_ready
        self.action: Action | None = None
        self.stop_signal = signal.SIGTERM
        self.next_config: Config | None = None
        self.pids: dict[int, int] = {}  # worker index -> pid of the process serving it
        self.keeper_pid: int | None = None
        self.ready: set[int] = set()
        self.replacements: dict[int, multiprocessing.process.BaseProcess] = {}
        # When each worker index last died: kept across generations, so that a
        # worker that crashes at start is restarted with backoff, not in a loop.
        self._deaths = deaths
        self._kill_timer: asyncio.TimerHandle | None = None
        self._buffer = b""
        self._announced = False
        self.ever_ready = False  # some worker of this generation served

    def main_context(self) -> Generator[None, signal.Signals, None]:
        """To be wrapped with ``aiotools.main_context`` and given to ``start_server``."""
        loop = asyncio.get_running_loop()
        quiet = _QuietAllChildrenGone()
        logging.getLogger("aiotools.server").addFilter(quiet)
        # These replace aiotools' own handlers: stopping goes through
        # _signal_all, which also reaches replacement workers.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        loop.add_reader(self.read_fd, self._on_report)
        watchdog = loop.create_task(self._watch())
        try:
            yield
        finally:
            # Until the next generation's handlers are in place, signals wait
            # (blocked) rather than killing the process or being lost.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            watchdog.cancel()
            with contextlib.suppress(Exception):
                loop.remove_reader(self.read_fd)
            if self.action is None:
                # aiotools saw all of its processes exit, the keeper too
                # (killed from outside?): start over with a fresh generation.
                self.action = Action.RESTART
                self.stop_signal = signal.SIGHUP
                self._signal_all(signal.SIGHUP)
            self._join_replacements()
            # Every worker of this generation has exited (aiotools waited for its own).
            self.metrics.workers_stopped(self.pids.values())
            logging.getLogger("aiotools.server").removeFilter(quiet)

    # -- signals ---------------------------------------------------------

    def _on_stop(self, signum: signal.Signals) -> None:
        if self.action is Action.STOP:
            log.warning("received %s again: killing the workers now", signum.name)
            self._signal_all(signal.SIGKILL)
            return
        log.info("received %s: stopping", signum.name)
        self.action = Action.STOP
        self.stop_signal = signum
        self._signal_all(signum)
        self._kill_stragglers_later()

    def _kill_stragglers_later(self) -> None:
        """Workers that have not stopped after the graceful timeout are killed.

        aiotools' own wait_timeout does not apply once its handlers are
        replaced: without this, one stuck worker would hang a stop or reload.
        """
        if self._kill_timer is None:
            delay = self.config.shutdown_timeout_s * 2 + 2
            loop = asyncio.get_running_loop()
            self._kill_timer = loop.call_later(delay, self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        for index, pid in list(self.pids.items()):
            if self._alive(index, pid):
                log.warning("worker %d (pid %d) did not stop in time; killing it", index, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _on_reload(self) -> None:
        if self.action is Action.STOP:
            return
        try:
            config = self.reload_config()
        except ConfigError as exc:
            log.error("reload refused, still running the old settings: %s", exc)
            return
        if self.action is not None:
            # A reload is under way: the next generation takes the newest settings.
            self.next_config = config
            return
        log.info("received SIGHUP: replacing %d workers", self.config.workers)
        self.metrics.reloaded()
        self.action = Action.RELOAD
        self.next_config = config
        self.stop_signal = signal.SIGHUP
        self._signal_all(signal.SIGHUP)
        self._kill_stragglers_later()

    def _signal_all(self, signum: signal.Signals) -> None:
        keeper = [] if self.keeper_pid is None else [self.keeper_pid]
        for pid in [*self.pids.values(), *keeper]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # -- reports from workers --------------------------------------------

    def _on_report(self) -> None:
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            state, index_text, pid_text, generation = line.decode().split()
            if int(generation) != self.shared.generation:
                continue  # a late word from a worker of an earlier generation
            index, pid = int(index_text), int(pid_text)
            if state == "keeper":
                self.keeper_pid = pid
                if self.action is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, self.stop_signal)
            elif state == "started":
                self.pids[index] = pid
                if self.action is not None:
                    # Forked before the signal reached its siblings.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, self.stop_signal)
            elif state == "ready" and index not in self.ready:
                self.ready.add(index)
                self.ever_ready = True
                if self._announced:
                    log.info("worker %d is serving again (pid %d)", index, pid)
                    continue
                log.info("worker %d is serving (pid %d)", index, pid)
                if len(self.ready) == self.config.workers:
                    self._announced = True
                    self.on_ready(self.config)

    # -- dead workers ----------------------------------------------------

    def _alive(self, index: int, pid: int) -> bool:
        replacement = self.replacements.get(index)
        if replacement is not None and replacement.pid == pid:
            return replacement.is_alive()
        try:
            # WNOWAIT: look without reaping; aiotools reaps its own children.
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.action is not None:
                continue
            for index, pid in list(self.pids.items()):
                try:
                    if not self._alive(index, pid):
                        self._replace(index, pid)
                except Exception:
                    # Never let the watchdog die: log, and try again next tick.
                    log.exception("could not replace worker %d", index)

    def _replace(self, index: int, pid: int) -> None:
        # At once, even while backing off: the dead worker's connections
        # leave the gauges now.
        self.metrics.worker_died(pid)
        now = time.monotonic()
        recent = [t for t in self._deaths.get(index, []) if now - t < 60]
        delay = RESPAWN_BACKOFF_S[min(len(recent), len(RESPAWN_BACKOFF_S) - 1)]
        if recent and now - recent[-1] < delay:
            return  # crashing again and again: back off before the next try
        self._deaths[index] = [*recent, now]
        log.warning("worker %d (pid %d) died; starting a replacement", index, pid)
        process = multiprocessing.get_context("fork").Process(
            target=run_replacement,
            args=(index, self.shared, self.runner),
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
        old = self.replacements.pop(index, None)
        if old is not None:
            old.join(0)
            with contextlib.suppress(ValueError):
                old.close()
        self.replacements[index] = process
        self.metrics.worker_replaced()
        self.ready.discard(index)
        assert process.pid is not None
        self.pids[index] = process.pid

    def _join_replacements(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout_s * 2 + 2
        for process in self.replacements.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("replacement worker %s did not stop; killing it", process.pid)
                process.kill()
                process.join(1)
            with contextlib.suppress(ValueError):
                process.close()


__all__ = ["STOP_SIGNALS", "Action", "Supervisor"]
