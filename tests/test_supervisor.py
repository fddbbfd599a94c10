"""The supervisor's decisions, in-process: when to replace a worker, how long
to wait when something keeps failing, what a reload with broken settings does.

The processes themselves (forking replacements, signals, reloads under
traffic) are tested for real in ``test_lifecycle.py``; here the decisions are
taken against real child processes (sleeping ones) whose deaths arrive as
pidfd events, with the forking of a replacement recorded instead of done.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from server.common.config import Config, ConfigError, load
from server.process.handoff import STOP_SIGNALS, WorkerSetup
from server.process.supervisor import Supervisor
from server.process.watch import Backoff, WorkerProcesses


class Counts:
    """The main process' metrics, counted in plain numbers."""

    directory = ""

    def __init__(self) -> None:
        self.reloads = 0
        self.dead: list[int] = []
        self.replaced = 0

    def reloaded(self) -> None:
        self.reloads += 1

    def worker_died(self, pid: int) -> None:
        self.dead.append(pid)

    def worker_replaced(self) -> None:
        self.replaced += 1

    def workers_stopped(self, pids: Any) -> None:
        self.dead.extend(pids)


class RecordedReplacements(WorkerProcesses):
    """Workers whose replacements are recorded (when, for which index), not forked."""

    def __init__(self) -> None:
        # Only the settings are read (the worker count, to name processes in the logs).
        setup = WorkerSetup(load({"port": 0, "workers": 2}), "", "", None, 0, -1)  # type: ignore[arg-type]
        super().__init__(setup, lambda coro: None, Backoff(), Counts())  # type: ignore[arg-type]
        self.asked: list[tuple[float, int]] = []
        self.changed = asyncio.Event()

    def _replace(self, index: int, pid: int) -> None:
        if self.replacing and self.pids.get(index) == pid:
            self.asked.append((asyncio.get_running_loop().time(), index))
            self.changed.set()

    async def wait_asked(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.asked) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# A stand-in worker that a stop signal ends, as a worker's does, even where
# the tests run with SIGHUP ignored (under nohup, say: children inherit that).
SLEEPER = (
    "import signal, time\n"
    f"for signum in {sorted(int(s) for s in STOP_SIGNALS)}:\n"
    "    signal.signal(signum, signal.SIG_DFL)\n"
    f"signal.pthread_sigmask(signal.SIG_UNBLOCK, {sorted(int(s) for s in STOP_SIGNALS)})\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def sleeper(procs: list[subprocess.Popen[bytes]]) -> int:
    """Start one; its pid once it would die of a stop signal."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc.pid


def test_something_that_keeps_failing_waits_longer_each_time() -> None:
    backoff = Backoff()
    delays = [backoff.failed("x", now) for now in (0, 1, 2, 3, 4, 5)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 5.0, 5.0]
    assert backoff.failed("y", 5) == 0.0  # each thing on its own
    assert backoff.failed("x", 100) == 0.0  # a minute later it starts over
    backoff.succeeded("y")
    assert backoff.failed("y", 6) == 0.0


async def test_a_dead_worker_is_replaced_at_once_and_again_after_a_backoff(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    workers = RecordedReplacements()
    first, other = sleeper(sleepers), sleeper(sleepers)
    workers.started(0, first)
    workers.started(1, other)
    died_at = asyncio.get_running_loop().time()
    sleepers[0].kill()
    await workers.wait_asked(1)
    assert workers.asked[0][1] == 0 and workers.asked[0][0] - died_at < 0.5
    assert workers.metrics.dead == [first]  # type: ignore[attr-defined]
    # The replacement dies too, at once: the next one waits.
    second = sleeper(sleepers)
    workers.started(0, second)
    died_at = asyncio.get_running_loop().time()
    sleepers[-1].kill()
    await workers.wait_asked(2)
    assert workers.asked[1][0] - died_at >= Backoff.SCHEDULE_S[1] - 0.05
    assert workers.alive(other) and not workers.alive(second)
    workers.close(timeout=1)


async def test_no_replacement_once_the_generation_is_stopping(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    workers = RecordedReplacements()
    pid = sleeper(sleepers)
    workers.started(0, pid)
    workers.replacing = False
    sleepers[0].kill()
    async with asyncio.timeout(5):
        while workers.alive(pid):
            await asyncio.sleep(0.01)
    assert workers.asked == [] and workers.metrics.dead == [pid]  # type: ignore[attr-defined]
    workers.close(timeout=1)


def broken() -> Config:
    raise ConfigError("workers: expected a positive integer, got 'many'")


class SleeperWaves(Supervisor):
    """A supervisor whose new waves are ``sleep`` processes (one per index), not workers."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], **kwargs: Any) -> None:
        self.procs = procs
        super().__init__(**kwargs)

    def _wave(self, config: Config, generation: int) -> WorkerProcesses:
        wave = super()._wave(config, generation)
        procs = self.procs

        def start(count: int) -> None:
            for index in range(count):
                wave.started(index, sleeper(procs))

        wave.start = start  # type: ignore[method-assign]
        return wave


def sleeper_supervisor(
    procs: list[subprocess.Popen[bytes]], counts: Counts, workers: int = 1
) -> SleeperWaves:
    return SleeperWaves(
        procs,
        config=load({"port": 0, "workers": workers}),
        redis_url="redis://127.0.0.1:1/0",
        session_secret="s",
        reload_config=broken,
        runner_for=lambda config: asyncio.run,
        metrics=counts,
    )


async def test_a_reload_with_broken_settings_keeps_the_workers_and_says_so(
    caplog: pytest.LogCaptureFixture, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    counts = Counts()
    supervisor = sleeper_supervisor(sleepers, counts)
    try:
        pid = sleeper(sleepers)
        supervisor.workers.started(0, pid)
        with caplog.at_level(logging.ERROR, logger="chat-server"):
            supervisor._on_reload()
        assert supervisor.incoming is None and counts.reloads == 0
        assert "reload refused, still running the old settings" in caplog.text
        assert sleepers[0].poll() is None  # not signalled
        # With good settings, a new wave starts beside the old one, which is
        # told to go (SIGHUP) only once every new worker is ready.
        supervisor.reload_config = lambda: supervisor.config
        supervisor._on_reload()
        wave = supervisor.incoming
        assert wave is not None and counts.reloads == 1
        assert wave.generation == 1 and sleepers[0].poll() is None
        supervisor._reported("ready", 0, wave.pids[0], wave.generation)
        assert supervisor.workers is wave and supervisor.generation == 1
        assert sleepers[0].wait(5) == -signal.SIGHUP
        async with asyncio.timeout(5):
            while supervisor.outgoing:  # (closed once its process has exited)
                await asyncio.sleep(0.01)
        assert sleepers[1].poll() is None
        supervisor.workers.close(timeout=1)
    finally:
        supervisor.close()


async def test_a_new_wave_that_fails_is_stopped_and_the_old_one_keeps_serving(
    caplog: pytest.LogCaptureFixture, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    counts = Counts()
    supervisor = sleeper_supervisor(sleepers, counts, workers=2)
    try:
        old = [sleeper(sleepers), sleeper(sleepers)]
        for index, pid in enumerate(old):
            supervisor.workers.started(index, pid)
        supervisor.reload_config = lambda: supervisor.config
        supervisor._on_reload()
        wave = supervisor.incoming
        assert wave is not None
        supervisor._reported("ready", 0, wave.pids[0], wave.generation)
        # Its other worker dies before it is ready: the reload is given up.
        with caplog.at_level(logging.ERROR, logger="chat-server"):
            sleepers[3].kill()
            async with asyncio.timeout(5):
                while supervisor.incoming is not None:
                    await asyncio.sleep(0.01)
        failed = [r for r in caplog.records if "reload failed" in r.getMessage()]
        assert len(failed) == 1, caplog.text
        assert "still running the old workers" in failed[0].getMessage()
        assert sleepers[2].wait(5) == -signal.SIGTERM  # the new worker that was ready
        assert supervisor.workers.generation == 0
        assert [proc.poll() for proc in sleepers[:2]] == [None, None]
        supervisor.workers.close(timeout=1)
    finally:
        supervisor.close()
