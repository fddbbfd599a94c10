"""The idle scenario's memory per connection as an operator provisions it
(``--fresh``): two freshly started servers, each holding a number of idle
streams, a row beside the warm-up method's, with its ratio to bare in the
run's table and in the summary."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any, cast

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRESH_LABEL = "memory per connection, fresh servers (KiB)"

pytestmark = [pytest.mark.processes, pytest.mark.timeout(120)]


def run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_fresh_servers_give_memory_per_connection_beside_the_warm_up_figure(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "idle-ws.json"
    done = run(
        "benchmarks.loadgen", "--scenario", "idle", "--subscribers", "3", "--fresh", "2,6",
        "--hold", "0", "--settle", "0.2", "--targets", "chat,bare", "--no-progress",
        "--json", str(path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = cast(dict[str, Any], json.loads(path.read_text()))
    assert record["options"]["fresh"] == [2, 6]
    results = record["cases"][0]["results"]
    for name in ("chat", "bare"):
        figures = results[name]
        # Each count on a server of its own: 2, then 6 streams, all open.
        assert figures["fresh_streams"] == [2, 6], figures
        assert figures["fresh_rss_high_mib"] > 0 and figures["fresh_rss_low_mib"] > 0
        per_connection = (figures["fresh_rss_high_mib"] - figures["fresh_rss_low_mib"]) / 4
        assert figures["fresh_memory_per_connection_kib"] == pytest.approx(per_connection * 1024)
        # The warm-up method's figure is still measured, on a server of its own.
        assert figures["streams"] == 3 and "memory_per_connection_kib" in figures
        assert figures["server_exit_codes"] == [0]
    # The table: the row with chat/bare, as the other rows.
    row = next(line for line in done.stdout.splitlines() if line.startswith(FRESH_LABEL))
    assert len(row[len(FRESH_LABEL) :].split()) == 3  # chat, bare, chat/bare

    text = run("benchmarks.report", str(tmp_path), timeout=60).stdout
    summary = text[: text.index("The targets\n")]
    assert "fresh servers" in summary  # a headline figure of the idle row


def test_fresh_takes_two_growing_counts_or_zero(tmp_path: pathlib.Path) -> None:
    for bad in ("3000", "3000,1000", "0,10", "a,b"):
        done = run("benchmarks.loadgen", "--scenario", "idle", "--fresh", bad, timeout=30)
        assert done.returncode == 2 and "--fresh" in done.stderr, bad
