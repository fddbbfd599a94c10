"""Workarounds of aiotools 2.2.4, in one place, each with the test that fails without it.

aiotools starts a generation of workers and forwards stop signals to them;
it has no reload and never replaces a worker that dies, and a few of its
habits get in the way of a supervisor that does both (see
:mod:`server.process.supervisor`). What follows fills those gaps. Check each one
against a new aiotools release: the tests named below say whether it is
still needed.

- :func:`keeper`: ``test_replacing_every_original_worker_keeps_the_replacements_serving``;
  its reset of the inherited signal wakeup descriptor:
  ``test_sigterm_under_traffic_exits_0_and_tells_streams_to_reconnect``
- :func:`run_replacement`: ``test_killed_worker_is_replaced_within_2s_and_nothing_is_lost``;
  its reset of the inherited signal wakeup descriptor:
  ``test_workers_that_cannot_start_are_retried_until_redis_is_back``
- :class:`QuietEchoes`: ``test_json_logs_have_one_line_per_lifecycle_event_and_no_secret``
- :func:`forget_reaped_children`: ``test_reloads_and_replacements_leak_no_file_descriptors``
- the supervisor's own stop handlers and straggler timer (aiotools' are
  replaced, and with them its ``wait_timeout``):
  ``test_a_stuck_worker_cannot_hang_a_stop``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.process
import os
import signal
from collections.abc import Callable, Container, Sequence
from typing import Any

import aiotools

from .handoff import STOP_SIGNALS, Runner, WorkerSetup, die_with_parent, report, title

AIOTOOLS_VERSION = "2.2.4"  # the release these were written against


def keeper(stop_event: Any, index: int, args: Sequence[Any]) -> None:
    """An aiotools extra process that only waits for the stop signal.

    aiotools ends a generation once every process it started has exited.
    Replacement workers are not its own, so after the last original worker
    died and was replaced, aiotools would stop a healthy server. The keeper
    outlives the workers until the supervisor stops it with them.
    """
    setup: WorkerSetup = args[0]
    # Forked from the main process' event loop, this process still holds its
    # signal wakeup descriptor: a signal here would also wake the main loop,
    # which would take it for a second signal of its own.
    signal.set_wakeup_fd(-1)
    title("keeper")
    die_with_parent(parent=setup.main_pid)
    report(setup, "keeper", index)
    # aiotools' handlers raise on the stop signals; that is the way out.
    with contextlib.suppress(SystemExit, KeyboardInterrupt, aiotools.InterruptedBySignal):
        while True:
            signal.pause()


def run_replacement(
    context_of: Callable[..., Any], index: int, setup: WorkerSetup, runner: Runner
) -> None:
    """Body of a worker that the main process starts to replace one that died.

    aiotools starts the first workers of a generation but never replaces
    one; this runs the same worker context (``context_of``) the way aiotools does: stop
    signals handled on the loop, the signal that came given back at the
    context's ``yield``.

    Like the keeper, it lets go of the signal wakeup descriptor inherited
    from the main process first: the loop puts the inherited one back when
    it closes, and a stop signal that came then (a worker that failed to
    start, told to stop with its siblings) would reach the main process as
    a stop signal of its own.
    """
    signal.set_wakeup_fd(-1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[signal.Signals] = loop.create_future()

        def on_signal(signum: signal.Signals) -> None:
            if not stopped.done():
                stopped.set_result(signum)

        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        context = context_of(loop, index, (setup,))
        async with context:
            context.yield_return = await stopped

    runner(main())


# aiotools' words for a worker that has ended (loggers aiotools.server, aiotools.fork).
_A_CHILD_ENDED = ("A child process [%d]", "child process %d exit status already read")


class QuietEchoes(logging.Filter):
    """What aiotools logs that is no news here (it matches aiotools' message
    text): that all its workers have exited, which is how every stop and
    reload ends; and how a worker ended that the supervisor reported (and
    replaced) when it died, which aiotools tells again when it notices, or
    when the generation ends: ``reported`` holds those pids."""

    LOGGERS = ("aiotools.server", "aiotools.fork")

    def __init__(self, reported: Container[int]) -> None:
        super().__init__()
        self.reported = reported

    def install(self) -> QuietEchoes:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_A_CHILD_ENDED):
            return not (record.args and record.args[0] in self.reported)  # type: ignore[index]
        return "All child processes have terminated" not in record.getMessage()


def forget_reaped_children() -> None:
    """Release what multiprocessing keeps for workers that aiotools has reaped.

    aiotools waits for its workers through a pidfd and never joins their
    ``multiprocessing.Process``: each would keep two pipe descriptors open
    for the life of the main process, two more with every reload. (Uses
    multiprocessing's private ``_children`` and ``_popen``.)
    """
    for process in list(multiprocessing.process._children):  # type: ignore[attr-defined]
        pid = process.pid
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            continue  # still ours to reap: alive, or a zombie someone will wait for
        except ChildProcessError:
            pass  # already reaped
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        finalizer = getattr(getattr(process, "_popen", None), "finalizer", None)
        if finalizer is not None:
            finalizer()
