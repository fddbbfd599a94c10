"""The main process while workers run: generations, signals, dead workers.

The supervisor owns what outlives a generation of workers: the listening
socket, the pipe workers report on ("started", "ready", with their pid),
the generation count and one backoff. Each generation is one
``aiotools.start_server`` call with :meth:`Supervisor.main_context`:

- SIGINT/SIGTERM: stop every worker (each tells its clients to reconnect).
- SIGHUP: read the settings again; if not valid, log one line and keep the
  workers. If valid, a rolling reload: a new wave of workers is forked
  (fresh imports, the new settings) beside the serving one, on the same
  socket. Once every new worker reported "ready", the old ones are told to
  go (SIGHUP): each stops accepting (new connections reach the new wave;
  none is refused), closes its streams spread over a few seconds with a
  reconnect hint, and exits. A new wave that fails (a worker exits, or is
  not ready within :data:`~server.process.reloads.WAVE_READY_S`) is stopped, and the old one keeps
  serving (one line logged). A SIGHUP during a reload brings one more wave
  once this one serves.
- A worker that dies is replaced with the same index (:mod:`server.process.watch`,
  from a pidfd event); if every process aiotools started is gone, a new
  generation starts (workers still serving then, the keeper having been
  killed, hand over to it as in a reload). Either waits longer each time it
  keeps failing (one :class:`~server.process.watch.Backoff`).
- With a ``webhook_url``, each generation has one process more, under the
  index after the workers': the webhook deliverer
  (:mod:`server.process.delivery`), replaced and renewed as a worker is,
  but not counted among the workers nor announced as serving.

One ``aiotools.start_server`` call (a generation) therefore lasts across
reloads: its keeper keeps it open once the workers it started have gone.

What aiotools needs worked around is in :mod:`server.process.workarounds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import aiotools

from ..common.config import Config, ConfigError, keep_bound_settings
from . import logs
from .companions import Companion, Companions
from .handoff import STOP_SIGNALS, Runner, WorkerSetup, bind
from .reloads import Ending, RollingReloads
from .watch import Backoff, Timers, WorkerProcesses, wait_blocked, worker_context
from .workarounds import QuietEchoes, forget_reaped_children, keeper

if TYPE_CHECKING:  # imported by the main process once the metrics directory is set
    from .instance_metrics import InstanceMetrics

log = logging.getLogger("chat-server")

GENERATION = "generation"  # the backoff's key for starting a whole generation


class Supervisor(RollingReloads):
    def __init__(
        self,
        config: Config,
        *,
        redis_url: str,
        session_secret: str,
        reload_config: Callable[[], Config],
        runner_for: Callable[[Config], Runner],
        metrics: InstanceMetrics,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self.session_secret = session_secret
        self.reload_config = reload_config
        self.runner_for = runner_for
        self.metrics = metrics
        self.backoff = Backoff()
        self.companions = Companions(companions, self.backoff)
        self.timers = Timers()  # the main process' own (the companions')
        self.generation = 0  # the serving wave's
        self.reported: set[int] = set()  # pids of workers whose death was logged
        self.newest_generation = 0
        self.sock = bind(config.host, config.port, config.backlog)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.outgoing: list[WorkerProcesses] = []  # waves told to go, until they exit
        self.carried: list[WorkerProcesses] = []
        self._begin()

    def _begin(self) -> None:
        """What one generation knows of its processes, fresh."""
        self.workers = self._wave(self.config, self.generation)  # the serving wave
        self.setup = self.workers.setup
        self.runner = self.workers.runner
        self.incoming: WorkerProcesses | None = None  # a reload's wave, until ready
        self.ending: Ending | None = None
        self.stop_signal = signal.SIGTERM
        # Settings a SIGHUP brought while a reload was under way: the next wave's.
        self.next_config: Config | None = None
        self.keeper_pid: int | None = None
        self.ever_ready = False  # some worker of this generation served
        self._buffer = b""

    def _wave(self, config: Config, generation: int) -> WorkerProcesses:
        setup = WorkerSetup(
            config,
            self.redis_url,
            self.session_secret,
            self.sock,
            os.getpid(),
            self.write_fd,
            generation,
            metrics_dir=self.metrics.directory,
        )
        self.newest_generation = max(self.newest_generation, generation)
        wave = WorkerProcesses(setup, self.runner_for(config), self.backoff, self.metrics)
        wave.reported = self.reported  # (one set for every wave: see QuietEchoes)
        return wave

    # -- generations -----------------------------------------------------

    def run(self) -> None:
        """Run generations of workers until a stop signal."""
        # Between two generations signals wait, blocked, instead of killing
        # the process (the main context handles them while one runs).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            while True:
                aiotools.start_server(
                    worker_context,
                    main_ctxmgr=aiotools.main_context(self.main_context),
                    num_workers=self.setup.processes,  # the webhook deliverer too
                    extra_procs=(keeper,),
                    args=(self.setup,),
                    stop_signals=STOP_SIGNALS,
                    runner=self.runner,
                    # A worker that fails to start or stop is replaced here; aiotools
                    # would SIGINT the process group (the server and its group-mates).
                    ignore_child_interrupts=True,
                )
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                forget_reaped_children()
                if self.ending is Ending.STOP:
                    return
                self._next_generation()
        finally:
            self.close()

    def close(self) -> None:
        """Close what outlives the generations: the socket and the report pipe."""
        self.sock.close()
        os.close(self.read_fd)
        os.close(self.write_fd)

    def _next_generation(self) -> None:
        if self.ever_ready:
            self.backoff.succeeded(GENERATION)
        if self.carried:  # (at once: those serve meanwhile, and nothing failed)
            log.warning("the keeper process is gone; new workers take over")
            delay = 0.0
        else:
            delay = self.backoff.failed(GENERATION, time.monotonic())
            log.error("all workers are gone; starting new ones in %.1f s", delay)
        if wait_blocked(delay):
            with contextlib.suppress(ConfigError):
                self.next_config = self.reload_config()
        if self.next_config is not None:
            self._apply(self.next_config)
        self.generation = self.newest_generation + 1
        self._begin()

    def _apply(self, config: Config) -> None:
        self.config = keep_bound_settings(self.config, config)
        logs.configure(self.config.log_level, self.config.log_format)

    def _on_ready(self) -> None:
        self._hand_over()
        if self.generation == 0:
            workers = self.config.workers
            print(
                f"chat-server: serving {self.url} with {workers} "
                f"worker{'s' if workers != 1 else ''} (pid {os.getpid()})",
                flush=True,
            )
        else:
            log.info("reloaded: %d workers ready", self.config.workers)

    def main_context(self) -> Generator[None, signal.Signals, None]:
        """To be wrapped with ``aiotools.main_context`` and given to ``start_server``."""
        loop = asyncio.get_running_loop()
        quiet = QuietEchoes(self.reported).install()
        # These replace aiotools' own handlers: stopping goes through
        # _signal_all, which also reaches the workers forked here.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        loop.add_reader(self.read_fd, self._on_report)
        self.companions.watch(self.timers.later, lambda: self.ending is Ending.STOP)
        self._resume_carried()
        try:
            yield
        finally:
            self.companions.unwatch()
            self.timers.cancel()
            # Until the next generation's handlers are in place, signals wait
            # (blocked) rather than killing the process or being lost.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            with contextlib.suppress(Exception):
                loop.remove_reader(self.read_fd)
            if self.ending is None and not self._carry_over():
                # aiotools saw all of its processes exit, and no worker
                # serves: start over with a fresh generation.
                self.ending = Ending.ALL_GONE
                self.stop_signal = signal.SIGHUP
                self._signal_all(signal.SIGHUP)
            if self.ending is not None:
                for wave in self.waves():
                    wave.close(timeout=self.config.stop_deadline_s)
                self.outgoing, self.carried = [], []
            quiet.remove()

    # -- signals ---------------------------------------------------------

    def _on_stop(self, signum: signal.Signals) -> None:
        if self.ending is Ending.STOP:
            log.warning("received %s again: killing the workers now", signum.name)
            self._signal_all(signal.SIGKILL)
            return
        log.info("received %s: stopping", signum.name)
        self.ending = Ending.STOP
        self.stop_signal = signum
        self._signal_all(signum)
        delay = self.config.stop_deadline_s
        for wave in self.waves():
            wave.later(delay, wave.kill_stragglers)

    def _signal_all(self, signum: signal.Signals) -> None:
        for wave in self.waves():
            wave.replacing = False
            wave.signal_all(signum)
        if self.keeper_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.keeper_pid, signum)

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
            self._reported(state, int(index_text), int(pid_text), int(generation))

    def _reported(self, state: str, index: int, pid: int, generation: int) -> None:
        if state == "keeper":
            self.keeper_pid = pid
            if self.ending is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, self.stop_signal)
            return
        wave = next((w for w in self.waves() if w.generation == generation), None)
        if wave is None:
            return  # a late word from a worker of a wave that is gone
        if state == "started":
            wave.started(index, pid)
            if wave.told is not None:
                # Forked before the signal reached its siblings.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, wave.told)
        elif state == "delivering":
            again = " again" if index in wave.replacements else ""
            log.info("the webhook deliverer is delivering%s (pid %d)", again, pid)
        elif state == "ready" and index not in wave.ready and wave.told is None:
            wave.ready.add(index)
            self.ever_ready = True
            if wave.announced:
                log.info("worker %d is serving again (pid %d)", index, pid)
                return
            log.info("worker %d is serving (pid %d)", index, pid)
            if len(wave.ready) < wave.setup.config.workers:
                return
            if wave is self.incoming:
                self._swap()
            elif wave is self.workers:
                wave.announced = True
                self._on_ready()
