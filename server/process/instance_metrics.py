"""The main process' share of the metrics: its own counters, and its dead workers.

Every process of one running ``chat-server`` writes its metrics to memory-
mapped files in one private directory (prometheus_client's multiprocess
mode), which the main process creates before any worker starts (see
:func:`server.process.cli.metrics_directory`); a scrape, whichever worker answers,
sums the files. prometheus_client chooses between plain and file-backed
values once, when it is first imported, by whether
``PROMETHEUS_MULTIPROC_DIR`` is set: this module (which imports it) is
therefore imported by the main process only once the directory is set, and
:func:`require_multiprocess` says so loudly when it is not.

The main process counts what only it sees (reloads, replaced workers) and
tidies the directory when a worker has died: the gauges of live processes
(open connections) drop what that worker held, and its counters and
histograms are added to archive files and its own files removed, so they
stay in the sums, as a counter must, while the directory holds the files of
live processes and a few archives however many workers came and went.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, multiprocess

from ..common.metrics import directory_lock, require_multiprocess
from ..common.prometheus_compat import fold_dead_process


class InstanceMetrics:
    """What the main process counts, and its bookkeeping of dead workers."""

    def __init__(self, directory: str) -> None:
        require_multiprocess(directory)
        self.directory = directory
        # registry=None: the scrape reads the directory, not a registry.
        self._reloads = Counter("chat_reloads", "Reloads (SIGHUP) of this instance.", registry=None)
        self._restarts = Counter(
            "chat_worker_restarts",
            "Workers (and webhook deliverers) that died and were replaced.",
            registry=None,
        )

    def reloaded(self) -> None:
        self._reloads.inc()

    def worker_died(self, pid: int) -> None:
        """Drop a dead worker's live gauges, and fold its counters and
        histograms into the instance's archive files (which count in the
        totals as they did): the directory holds files of live processes and
        a few archives, however many workers came and went."""
        # Bookkeeping that fails must not take the main process down with it.
        with contextlib.suppress(OSError), directory_lock(self.directory, exclusive=True):
            multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
            fold_dead_process(self.directory, pid)

    def worker_replaced(self) -> None:
        self._restarts.inc()

    def workers_stopped(self, pids: Iterable[int]) -> None:
        """A generation of workers has ended (a reload, a stop): each is dead."""
        for pid in pids:
            self.worker_died(pid)
