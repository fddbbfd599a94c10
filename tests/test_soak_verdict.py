"""The long soak's schedule, verdict arithmetic, plots and report section, on a
small synthetic record (benchmarks/soak_verdict.py, benchmarks/report.py)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from benchmarks import report, soak_verdict
from benchmarks.soak_verdict import judge, rss_segments, schedule, slope_per_hour

MIB = 2**20


def test_an_hour_has_the_documented_schedule() -> None:
    events = schedule(3600)
    at = {kind: [round(t / 60, 1) for t, k in events if k == kind] for _, kind in events}
    assert at["reload"] == [2.5, 12.5, 22.5, 32.5, 42.5, 52.5]
    assert at["kill"] == [10.5, 25.5, 40.5, 55.5]
    assert at["redis"] == [35.0]
    assert at["pause"] == [9.0, 19.0, 29.0, 39.0, 49.0, 59.0]  # 60 s each, the last at the end


def test_five_minutes_have_each_fault_once_and_a_day_keeps_the_hourly_rate() -> None:
    short = schedule(300)
    assert [k for _, k in short] == ["reload", "pause", "redis", "kill", "pause"]
    assert soak_verdict.pause_length(300) == 30
    assert short[-1][0] + 30 == 300
    day = [k for _, k in schedule(86400)]
    assert (day.count("reload"), day.count("kill"), day.count("redis")) == (144, 96, 24)
    assert day.count("pause") == 144


def test_slope_per_hour_is_least_squares() -> None:
    assert slope_per_hour([(0, 10), (1800, 15), (3600, 20)]) == pytest.approx(10)
    assert slope_per_hour([(0, 1), (0, 2)]) == 0
    assert slope_per_hour([(5, 1)]) == 0


def samples(duration: float, growth_per_hour: dict[str, float]) -> list[dict[str, Any]]:
    """Samples every 10 s; worker "a" lives the first half, "b" the second (a
    kill), each starting at 100 MiB and growing by its share per hour."""
    out = []
    for i in range(int(duration / 10) + 1):
        t = i * 10.0
        pid = "a" if t < duration / 2 else "b"
        born = 0 if pid == "a" else duration / 2
        rss = 100 * MIB * (1 + growth_per_hour[pid] * (t - born) / 3600)
        out.append(
            {
                "t": t,
                "phase": "churn",
                "workers": {pid: {"rss": rss, "fds": 50, "tasks": 20}},
                "connections": 10,
                "redis_used_memory": 2 * MIB,
                "keys": {"sessions": 5, "rooms": 3},
                "stream_entries": i,
                "publish_p50_ms": 2.0,
                "publish_p99_ms": 9.0,
                "delivery_p50_ms": 3.0,
                "delivery_p99_ms": 12.0,
                "errors": {"post HTTP 503": 1} if i == 7 else {},
            }
        )
    return out


def reading(tasks: float, keys: dict[str, int], rss: float = 1) -> dict[str, Any]:
    return {
        "tasks": {"a": tasks},
        "fds": {"a": 50},
        "rss": {"a": rss, "b": 1},
        "connections": 10,
        "keys": keys,
    }


def record(
    growth: dict[str, float], later_tasks: float = 20, lost: int = 0, later_rss: float = 1
) -> dict[str, Any]:
    pause = {"settled": True, "rooms_created": 100, "key_slack": {}}
    return {
        "duration_s": 3600,
        "samples": samples(3600, growth),
        "events": [{"t": 1800, "kind": "kill", "detail": ""}],
        "pauses": [
            pause | {"from_t": 540, "t": 600, "reading": reading(20, {"rooms": 300})},
            # Ten rooms more, three keys each: allowed.
            pause
            | {
                "from_t": 3540,
                "t": 3600,
                "rooms_created": 110,
                "reading": reading(later_tasks, {"rooms": 330}, later_rss),
            },
        ],
        "key_slack_per_new_room": {"rooms": 3},
        "delivery": {"lost": lost, "duplicates": 0, "out_of_order": 0},
        "tracebacks": 0,
    }


def test_rss_is_judged_per_worker_life_after_the_warm_up_weighted_by_length() -> None:
    segments = rss_segments(samples(3600, {"a": 0.02, "b": 0.08}), 3600)
    assert [s["pid"] for s in segments] == ["a", "b"]
    # Judged from 10 min (the warm-up) and after b's own first two minutes.
    assert (segments[0]["from_s"], segments[1]["from_s"]) == (600, 1920)
    a, b = (s["percent_per_hour"] for s in segments)
    assert a == pytest.approx(2, rel=0.05)  # of each life's mean RSS
    assert b == pytest.approx(8, rel=0.1)
    weighted = soak_verdict.weighted_rss_slope(segments)
    assert weighted is not None and a < weighted < b


def test_a_clean_record_passes_and_each_failure_is_named() -> None:
    judged = judge(record({"a": 0.01, "b": 0.01}))
    assert judged["problems"] == [], judged
    assert [p["problems"] for p in judged["pauses"]] == [[]]
    # (Both pauses read the same RSS.)
    rss_row = ["worker RSS at the pauses, largest worker, slope (%/h)", 0.0, "< 5", True]
    assert rss_row in judged["rows"]

    leaking = judge(record({"a": 0.2, "b": 0.2}, later_tasks=40, lost=3, later_rss=1.5))
    named = [p.split(":")[0] for p in leaking["problems"]]
    assert named == [
        "worker RSS at the pauses, largest worker, slope (%/h)",
        "pauses back to the first pause's reading (within 10%)",
        "steady streams",
        "pause at 3600 s",
    ]
    assert "tasks: 20 -> 40" in leaking["problems"][-1]


def test_the_report_shows_the_verdict_and_links_the_plots(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("matplotlib")
    figures = record({"a": 0.01, "b": 0.01})
    figures["verdict"] = judge(figures)
    names = soak_verdict.plot(figures, str(tmp_path), "soak-test")
    assert sorted(names) == sorted(soak_verdict.PLOTS)
    for name in names.values():
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    run = {
        "scenario": "soak",
        "description": "a soak",
        "command": "python -m benchmarks.loadgen --scenario soak",
        "started_at": "2026-01-01T00:00:00+00:00",
        "machine": {"commit": "abc"},
        "options": {"workers": 2, "transport": "mixed", "subscribers": 2000},
        "metrics": [["lost", "lost", "{:.0f}", False]],
        "cases": [{"label": "soak", "params": {}, "results": {"chat": figures}}],
    }
    path = tmp_path / "soak-test.json"
    path.write_text(json.dumps(run))
    [loaded] = report.load([str(tmp_path)])
    text = "\n".join(report.soak_section(loaded))
    assert text.startswith("**Verdict**: passed. Faults: kill at 1800 s; 2 pauses.")
    assert "worker RSS at the pauses, largest worker, slope (%/h)" in text
    for name in names.values():
        assert f".. image:: {os.path.relpath(tmp_path / name, report.ROOT)}" in text
