"""Canaries for :mod:`server.common.prometheus_compat`: how prometheus_client
chooses file-backed values, and the files of its multiprocess mode, checked
with real processes writing real files. Each fails when prometheus_client
changes under it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from importlib.metadata import version

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from server.common.prometheus_compat import CHECKED_ON, fold_dead_process, values_in_files

from .support import checked_release

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_prometheus_client_is_a_release_these_were_checked_on() -> None:
    """A new prometheus_client: run these canaries, read the module's list again, then add it."""
    assert checked_release(version("prometheus_client"), CHECKED_ON), version("prometheus_client")


def run(code: str, directory: pathlib.Path | None) -> str:
    """What ``code`` prints, run by a fresh interpreter (in multiprocess mode
    on ``directory``, unless None)."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    if directory is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_values_in_files_follows_the_environment_at_import(tmp_path: pathlib.Path) -> None:
    code = """
        from server.common.prometheus_compat import values_in_files
        from prometheus_client import values
        print(values_in_files(), values.ValueClass is values.MutexValue)
    """
    assert run(code, None) == "False True"
    assert run(code, tmp_path) == "True False"
    # (This process imported prometheus_client without the variable.)
    assert not values_in_files()


COUNT = """
    import os
    from prometheus_client import Counter, Histogram
    Counter("canary_things", "Things.", registry=None).inc({n})
    Histogram("canary_seconds", "Durations.", registry=None, buckets=(1.0,)).observe({n})
    print(os.getpid())
"""


def totals(directory: pathlib.Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("canary_") and sample.labels.get("le") in (None, "+Inf")
    }


def test_a_dead_process_folded_into_the_archives_still_counts(tmp_path: pathlib.Path) -> None:
    first = int(run(COUNT.format(n=2), tmp_path))
    second = int(run(COUNT.format(n=3), tmp_path))
    # One file per process and kind, named as fold_dead_process expects.
    names = {p.name for p in tmp_path.iterdir()}
    for pid in (first, second):
        assert {f"counter_{pid}.db", f"histogram_{pid}.db"} <= names
    expected = {
        "canary_things_total": 5.0,
        "canary_seconds_count": 2.0,
        "canary_seconds_sum": 5.0,
        "canary_seconds_bucket": 2.0,  # (le="+Inf")
    }
    assert totals(tmp_path) == expected
    fold_dead_process(str(tmp_path), first)
    fold_dead_process(str(tmp_path), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    # The collector sums the archives like any file of their kind.
    assert totals(tmp_path) == expected
