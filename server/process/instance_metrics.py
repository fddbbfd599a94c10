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
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, mmap_dict, multiprocess

from ..common.metrics import directory_lock, require_multiprocess

# What a dead process' files hold that must keep counting: sums of its own.
# (Its live gauges are dropped, see mark_process_dead.)
_FOLDED = ("counter", "histogram", "summary")
_MmapedDict: Any = mmap_dict.MmapedDict  # (untyped)


def fold(path: str) -> None:
    """Add the values of a dead process' file to its kind's archive file, then remove it."""
    if not os.path.exists(path):
        return
    kind = os.path.basename(path).split("_", 1)[0]
    archive = _MmapedDict(os.path.join(os.path.dirname(path), f"{kind}_archive.db"))
    try:
        for key, value, timestamp, _ in _MmapedDict.read_all_values_from_file(path):
            archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
    finally:
        archive.close()
    os.remove(path)


class InstanceMetrics:
    """What the main process counts, and its bookkeeping of dead workers."""

    def __init__(self, directory: str) -> None:
        require_multiprocess(directory)
        self.directory = directory
        # registry=None: the scrape reads the directory, not a registry.
        self._reloads = Counter("chat_reloads", "Reloads (SIGHUP) of this instance.", registry=None)
        self._restarts = Counter(
            "chat_worker_restarts", "Workers that died and were replaced.", registry=None
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
            for kind in _FOLDED:
                fold(os.path.join(self.directory, f"{kind}_{pid}.db"))

    def worker_replaced(self) -> None:
        self._restarts.inc()

    def workers_stopped(self, pids: Iterable[int]) -> None:
        """A generation of workers has ended (a reload, a stop): each is dead."""
        for pid in pids:
            self.worker_died(pid)
