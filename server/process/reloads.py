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
    ALL_GONE = "all gone"  # every process aiotools started has died, and no worker serves


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
    # Waves still serving when their generation ended under them, until the
    # next generation serves (see _carry_over).
    carried: list[WorkerProcesses]

    def _wave(self, config: Config, generation: int) -> WorkerProcesses:
        raise NotImplementedError

    def _apply(self, config: Config) -> None:
        raise NotImplementedError

    def _on_ready(self) -> None:
        raise NotImplementedError

    def waves(self) -> list[WorkerProcesses]:
        """Every wave whose processes may still run."""
        incoming = [] if self.incoming is None else [self.incoming]
        return [self.workers, *incoming, *self.outgoing, *self.carried]

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
        self._send_off(old, signal.SIGHUP, self._drained_s())
        if self.next_config is not None:
            config, self.next_config = self.next_config, None
            self._start_wave(config)

    def _carry_over(self) -> bool:
        """aiotools ended the generation because every process it started has
        exited, its keeper included (killed from outside), although workers
        it did not start still serve (a reload's, or replacements). They
        serve on into the next generation, whose workers take over from them
        as a reload's do (:meth:`_hand_over`); a reload under way is given
        up. False when no worker is left to carry over."""
        serving = [*self.carried, self.workers]
        if all(wave.all_exited() for wave in serving):
            return False
        if self.incoming is not None:
            self._wave_failed(self.incoming, "the keeper process is gone")
        self.carried = serving
        for wave in serving:
            wave.replacing = False  # (the new generation's workers are coming)
            wave.on_death = lambda index: None
        for wave in [*serving, *self.outgoing]:
            wave.suspend()  # (their watches and timers belong to the ending loop)
        return True

    def _resume_carried(self) -> None:
        """On the next generation's loop: watch the carried waves again, and
        those that were going, whose deadline starts over."""
        for wave in self.carried:
            wave.resume()
        for wave in list(self.outgoing):
            wave.resume()
            wave.later(self._drained_s(), wave.kill_stragglers)
            self._retire(wave)

    def _hand_over(self) -> None:
        """Workers of the new generation serve: the carried waves go, as a
        reload's old workers do."""
        carried, self.carried = self.carried, []
        for wave in carried:
            self._send_off(wave, signal.SIGHUP, self._drained_s())

    def _drained_s(self) -> float:
        """How long after being told to go an old worker may still run: its
        longest drain, then the stop deadline."""
        return DRAIN_LATEST_S + DRAIN_MAX_S + self.config.stop_deadline_s

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
