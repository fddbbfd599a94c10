"""``BENCHMARKS.rst`` opens with one summary table: the latest run of each scenario.

The report is generated from the committed JSON results by the documented
command; which run is the latest is worked out here again from the files.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LINK = re.compile(r"`([^`]+)`_")


def generate(*paths: pathlib.Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def runs(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in directory.glob("*.json")}


def latest(found: dict[str, dict[str, Any]]) -> set[str]:
    """The name of the run that started last, for each scenario, transport and size."""
    newest: dict[tuple[str, str, int], tuple[datetime.datetime, str]] = {}
    for name, run in found.items():
        key = (run["scenario"], run["options"]["transport"], run["options"]["subscribers"])
        when = datetime.datetime.fromisoformat(run["started_at"])
        if key not in newest or when > newest[key][0]:
            newest[key] = (when, name)
    return {name for _, name in newest.values()}


def opening(text: str) -> list[str]:
    """The first thing after the title and the comment that says the file is
    generated, up to the next blank line."""
    lines = text.splitlines()
    assert lines[:3] == ["=" * 10, "Benchmarks", "=" * 10]
    rest = lines[3:]
    while rest and not rest[0].strip():
        rest.pop(0)
    assert rest[0].startswith(".. This file is generated"), rest[0]
    rest.pop(0)
    while rest and (not rest[0].strip() or rest[0].startswith("   ")):
        rest.pop(0)
    end = rest.index("") if "" in rest else len(rest)
    return rest[:end]


def test_the_report_opens_with_the_latest_run_of_each_scenario() -> None:
    found = runs(RESULTS)
    assert found, "no committed results"
    text = generate(RESULTS)
    table = opening(text)
    assert table[0].startswith("+--") and table[-1].startswith("+--"), table[:2]
    header = [cell.strip() for cell in table[1].strip("|").split("|")]
    assert header[2:7] == ["chat", "bare", "socketio", "chat/bare", "chat/socketio"]
    assert text.index(table[0]) < text.index("The targets\n===========")

    named = LINK.findall("\n".join(table))
    assert sorted(named) == sorted(latest(found))
    # Each link leads to that run's own section, further down.
    for name in named:
        target = text.index(f"\n.. _{name}:\n")
        end = text.find("\n.. _", target + 1)
        section = text[target : end if end > 0 else len(text)]
        assert f"Started {found[name]['started_at']}," in section, name


def test_the_latest_run_is_the_one_that_started_last_not_the_last_file_name(
    tmp_path: pathlib.Path,
) -> None:
    # (Runs of one size and transport: another is a row of its own.)
    fanout = sorted(
        (run["started_at"], name)
        for name, run in runs(RESULTS).items()
        if run["scenario"] == "fanout"
        and (run["options"].get("transport"), run["options"].get("subscribers")) == ("ws", 1000)
    )
    assert len(fanout) >= 2
    (_, older), (_, newer) = fanout[0], fanout[-1]
    # By name, run9 would come after run10.
    shutil.copy(RESULTS / f"{older}.json", tmp_path / "fanout-run9.json")
    shutil.copy(RESULTS / f"{newer}.json", tmp_path / "fanout-run10.json")
    table = "\n".join(opening(generate(tmp_path)))
    assert LINK.findall(table) == ["fanout-run10"]
    # The scenarios the report knows and that have no run yet are named as such.
    for scenario in ("capacity", "rooms", "idle", "storm"):
        assert re.search(rf"\| {scenario}: +\| not run yet ", table), scenario


def test_a_reload_run_has_its_row_and_section(tmp_path: pathlib.Path) -> None:
    from benchmarks.scenarios import reload

    storm = next(run for run in runs(RESULTS).values() if run["scenario"] == "storm")
    figures = {
        "clients": 2000,
        "all_back_s": 2.5,
        "all_received_s": 2.6,
        "back": 2000,
        "published": 40,
        "lost": 0,
        "duplicates": 0,
        "steady_latency_p99_ms": 120.0,
        "latency_p99_ms": 400.0,
        "http_503": 0,
        "refused": 0,
        "heartbeat_slow": 1,
        "loop_stalls": 2,
        "server_cpu_s": 3.0,
    }
    run = storm | {
        "scenario": "reload",
        "description": reload.DESCRIPTION,
        "options": storm["options"] | {"subscribers": 2000, "transport": "mixed"},
        "metrics": [[m.label, m.key, m.fmt, m.ratio] for m in reload.METRICS],
        "cases": [
            {
                "label": "2000 mixed clients",
                "params": {},
                "results": {"chat": figures, "bare": figures | {"lost": None}},
            }
        ],
    }
    (tmp_path / "reload-run1.json").write_text(json.dumps(run))
    text = generate(tmp_path)
    table = "\n".join(opening(text))
    assert LINK.findall(table) == ["reload-run1"]
    assert re.search(r"\| reload: +\| time until every client is back \(s\) +\| +2\.50 ", table)
    assert "reload: every client moved to new workers" in text
    assert "latency p99, clients not being moved (ms)" in text
