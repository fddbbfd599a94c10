"""What the metrics rely on of prometheus_client beyond its documented API.

Checked on prometheus_client 0.26.0; ``tests/test_compat_prometheus.py``
fails when one of these changes. Check them against a new release.

- ``values.ValueClass``, chosen once when ``prometheus_client`` is first
  imported: ``values.MutexValue`` unless ``PROMETHEUS_MULTIPROC_DIR`` was
  set, then a class whose values live in files (:func:`values_in_files`).
- In multiprocess mode a process keeps its counters in
  ``counter_<pid>.db``, its histograms in ``histogram_<pid>.db`` and its
  summaries in ``summary_<pid>.db``; ``MultiProcessCollector`` reads every
  ``*.db`` file of the directory, takes the kind from the name's first
  word, and adds up what files of one kind hold. Those files are
  ``mmap_dict.MmapedDict`` files (``read_all_values_from_file``,
  ``read_value``, ``write_value``, ``close``). :func:`fold_dead_process`
  adds a dead process' values to ``<kind>_archive.db`` and removes its files.

Documented, so not here: ``multiprocess.mark_process_dead`` (the live
gauges of a dead process), ``MultiProcessCollector(registry, path=...)`` and
the gauges' ``multiprocess_mode``.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import mmap_dict, values

# The releases these were checked on (tests/test_compat_prometheus.py says
# when another is installed: check it, then add it).
CHECKED_ON = ("0.26.0",)

# What a dead process' files hold that must keep counting: sums of its own.
FOLDED = ("counter", "histogram", "summary")
_MmapedDict: Any = mmap_dict.MmapedDict  # (untyped)


def values_in_files() -> bool:
    """Whether metrics made from now on keep their values in files
    (``PROMETHEUS_MULTIPROC_DIR`` was set when prometheus_client was imported)."""
    return values.ValueClass is not values.MutexValue


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


def fold_dead_process(directory: str, pid: int) -> None:
    """Fold the counters, histograms and summaries of process ``pid`` into the
    archive files of ``directory``: they still count in the sums, and its
    files are gone."""
    for kind in FOLDED:
        fold(os.path.join(directory, f"{kind}_{pid}.db"))
