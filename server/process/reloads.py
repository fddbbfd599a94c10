"""Rolling reloads: a new wave of workers beside the serving one, then the old one goes.

The part of :class:`~server.process.supervisor.Supervisor` that a SIGHUP
with valid settings sets off (see that module's docstring).
"""

from __future__ import annotations

import enum
import logging
import signal
from typing import TYPE_CHECKING

from ..common.config import Config, ConfigError, keep_bound_settings
from .handoff import DRAIN_LATEST_S, DRAIN_MAX_S, WorkerSetup
from .watch import WorkerProcesses
from .workarounds import forget_reaped_children

if TYPE_CHECKING:
    from collections.abc import Callable

    from .handoff import Runner
    from .instance_metrics import InstanceMetrics

log = logging.getLogger("chat-server")

# How long a reload's new workers may take to report "ready" before the
# reload is given up (the old workers keep serving).
WAVE_READY_S = 30.0


class Ending(enum.Enum):
    """Why a generation (one ``aiotools.start_server`` call) ended."""

    STOP = "stop"  # SIGINT or SIGTERM
    ALL_GONE = "all gone"  # every process aiotools started has died, keeper included


class RollingReloads:
    """The waves of a reload; the supervisor's state they change."""

    config: Config
    reload_config: Callable[[], Config]
    metrics: InstanceMetrics
    ending: Ending | None
    generation: int
    newest_generation: int
    workers: WorkerProcesses  # the serving wave
    setup: WorkerSetup
    runner: Runner
    incoming: WorkerProcesses | None  # a reload's wave, until ready
    outgoing: list[WorkerProcesses]  # waves told to go, until they exit
    next_config: Config | None  # settings a SIGHUP brought while a reload was under way

    def _wave(self, config: Config, generation: int) -> WorkerProcesses:
        raise NotImplementedError

    def _apply(self, config: Config) -> None:
        raise NotImplementedError

    def _on_ready(self) -> None:
        raise NotImplementedError

    def _on_reload(self) -> None:
        if self.ending is not None:
            return
        try:
            config = self.reload_config()
        except ConfigError as exc:
            log.error("reload refused, still running the old settings: %s", exc)
            return
        self.metrics.reloaded()
        if self.incoming is not None:
            # A reload is under way: a wave with the newest settings follows it.
            self.next_config = config
            return
        self._start_wave(config)

    def _start_wave(self, config: Config) -> None:
        """Fork a new wave of workers beside the serving one, which goes once
        the new one is ready (:meth:`_swap`)."""
        config = keep_bound_settings(self.config, config)
        log.info("received SIGHUP: replacing %d workers", config.workers)
        wave = self._wave(config, self.newest_generation + 1)
        wave.replacing = False  # (until it serves: a worker that dies fails the reload)
        wave.on_death = lambda index: self._wave_failed(wave, f"new worker {index} exited")
        self.incoming = wave
        wave.later(WAVE_READY_S, lambda: self._wave_failed(wave, "new workers not ready in time"))
        try:
            wave.start(wave.setup.processes)  # (the webhook deliverer too)
        except OSError as exc:  # (a fork that failed: out of memory, process limit)
            self._wave_failed(wave, f"could not start new workers: {exc}")

    def _wave_failed(self, wave: WorkerProcesses, why: str) -> None:
        if wave is not self.incoming or self.ending is not None:
            return  # it serves already, was given up, or everything stops
        log.error("reload failed, still running the old workers: %s", why)
        self.incoming = None
        self.next_config = None
        self._send_off(wave, signal.SIGTERM, self.config.stop_deadline_s)

    def _swap(self) -> None:
        """The new wave is ready: it serves, the old one goes."""
        new, old = self.incoming, self.workers
        assert new is not None
        self.incoming = None
        self.workers, self.setup, self.runner = new, new.setup, new.runner
        self.generation = new.generation
        self._apply(new.setup.config)
        new.replacing = True
        new.on_death = lambda index: None
        new.announced = True
        self._on_ready()
        # Each old worker stops accepting, closes its streams spread over a
        # while (their clients reconnect to the new wave), and exits; one
        # still running once the longest drain and the stop deadline have
        # passed is killed.
        drained = DRAIN_LATEST_S + DRAIN_MAX_S
        self._send_off(old, signal.SIGHUP, drained + self.config.stop_deadline_s)
        if self.next_config is not None:
            config, self.next_config = self.next_config, None
            self._start_wave(config)

    def _send_off(self, wave: WorkerProcesses, signum: signal.Signals, deadline: float) -> None:
        """Tell ``wave`` to go; it is closed once its last process has exited,
        and whoever is still running ``deadline`` seconds later is killed."""
        wave.replacing = False
        wave.on_death = lambda index: self._retire(wave)
        self.outgoing.append(wave)
        wave.signal_all(signum)
        wave.later(deadline, wave.kill_stragglers)
        self._retire(wave)

    def _retire(self, wave: WorkerProcesses) -> None:
        if wave in self.outgoing and wave.all_exited():
            self.outgoing.remove(wave)
            wave.close(timeout=1)
            forget_reaped_children()
            if wave.told == signal.SIGHUP and self.ending is None:
                log.info("reload done: the old workers have exited")
