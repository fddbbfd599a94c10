"""The long soak's schedule, verdict and plots: pure functions of its record.

:func:`schedule` lays out the faults and the pauses of a run of ``duration``
seconds; :func:`judge` turns the samples, the pause readings and the
delivery counts into the verdict that the run prints and stores; :func:`plot`
draws one PNG per family of samples, the faults marked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .soak_check import GROWTH, Settled, verdict

HOUR = 3600.0
# The one-hour pattern: (kind, occurrences per hour, phase within each period).
# Reloads at 2.5, 12.5 ... 52.5 min, kills at 10.5, 25.5, 40.5, 55.5 min, the
# Redis restart at 35 min; pauses end at 10, 20 ... 60 min.
FAULTS = (("reload", 6, 0.25), ("kill", 4, 0.7), ("redis", 1, 35 / 60))
PAUSES_PER_HOUR = 6
PAUSE_S = 60.0
RSS_GOAL_PERCENT_PER_HOUR = 5.0
MIB = 2**20


def occurrences(per_hour: float, duration: float) -> int:
    """How many of a kind a run of ``duration`` s has: ``per_hour`` an hour,
    in proportion for other lengths, at least one."""
    return max(1, round(per_hour * duration / HOUR))


def pause_length(duration: float) -> float:
    """60 s, or a tenth of a shorter run (so that a 5-minute run still churns)."""
    return min(PAUSE_S, duration / 10)


def schedule(duration: float) -> list[tuple[float, str]]:
    """The run's events as (seconds from the start, kind), in time order: each
    fault ``n`` times at ``duration * (k + phase) / n``; pauses (``pause``, for
    :func:`pause_length`) ending at ``duration * (k + 1) / n``, the last one at
    the end. A fault that falls in a pause waits for its end."""
    events = [
        (duration * (k + phase) / n, kind)
        for kind, per_hour, phase in FAULTS
        for n in [occurrences(per_hour, duration)]
        for k in range(n)
    ]
    n = max(2, occurrences(PAUSES_PER_HOUR, duration))
    length = pause_length(duration)
    events += [(duration * (k + 1) / n - length, "pause") for k in range(n)]
    return sorted(events)


def warm_up(duration: float) -> float:
    """Samples before this are not judged: the first sixth of the run."""
    return duration / 6


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour (0 with fewer than 2)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * HOUR


def worker_series(samples: Sequence[Mapping[str, Any]], gauge: str) -> dict[str, list[Any]]:
    """Per worker process (pid): its (t, value) points of one gauge."""
    series: dict[str, list[Any]] = {}
    for sample in samples:
        for pid, values in sample.get("workers", {}).items():
            if values.get(gauge) is not None:
                series.setdefault(pid, []).append((sample["t"], values[gauge]))
    return series


def rss_segments(samples: Sequence[Mapping[str, Any]], duration: float) -> list[dict[str, Any]]:
    """The RSS trend of each worker process's life (a reload or a kill starts a
    new one), over its samples after the run's warm-up and after its own
    first two minutes (or the run's warm-up, if shorter: a new worker fills
    up as the streams come back to it); lives judged over less than a
    twentieth of the run (at least a minute) or fewer than 5 samples are
    left out. Slope as % of the life's mean RSS per hour."""
    start, own = warm_up(duration), min(120.0, warm_up(duration))
    shortest = max(60.0, duration / 20)
    segments = []
    for pid, points in worker_series(samples, "rss").items():
        born = points[0][0]
        judged = [(t, v) for t, v in points if t >= start and t >= born + own]
        if len(judged) < 5 or judged[-1][0] - judged[0][0] < shortest:
            continue
        mean = sum(v for _, v in judged) / len(judged)
        segments.append(
            {
                "pid": pid,
                "from_s": judged[0][0],
                "to_s": judged[-1][0],
                "mean_mib": round(mean / MIB, 1),
                "percent_per_hour": round(slope_per_hour(judged) / mean * 100, 2),
            }
        )
    return segments


def weighted_rss_slope(segments: Sequence[Mapping[str, Any]]) -> float | None:
    """The segments' slopes weighted by how long each was judged; None without any."""
    total = sum(s["to_s"] - s["from_s"] for s in segments)
    if not segments or total <= 0:
        return None
    weighted: float = sum(s["percent_per_hour"] * (s["to_s"] - s["from_s"]) for s in segments)
    return float(weighted / total)


def pause_rss_slope(pauses: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest worker's RSS at each pause (settled), as a slope in % of
    its mean per hour; None with fewer than two pauses.

    Every pause reads the workers at the same point of the run's cycle
    (churn paused, the server settled), whichever processes they are by
    then: with a reload every 10 minutes no worker lives long enough for
    the slope of its own life to be more than its filling up."""
    points = [(p["t"], max(p["reading"]["rss"].values())) for p in pauses if p["reading"]["rss"]]
    if len(points) < 2:
        return None
    mean = sum(v for _, v in points) / len(points)
    return round(slope_per_hour(points) / mean * 100, 2) if mean else None


def totals_slopes(samples: Sequence[Mapping[str, Any]], duration: float) -> dict[str, float]:
    """Per hour, after the warm-up, over the samples taken while churning: the
    workers' summed fds and tasks, the open streams, Redis' memory (MiB), its
    keys and its stream entries."""
    start = warm_up(duration)
    judged = [s for s in samples if s["t"] >= start and s.get("phase") == "churn"]

    def points(value: Any) -> list[tuple[float, float]]:
        found = [(s["t"], value(s)) for s in judged]
        return [(t, v) for t, v in found if v is not None]

    def summed(gauge: str) -> Any:
        return lambda s: sum(w.get(gauge) or 0 for w in s.get("workers", {}).values()) or None

    def mib(s: Mapping[str, Any]) -> float | None:
        used = s.get("redis_used_memory")
        return used / MIB if used is not None else None

    def keys(s: Mapping[str, Any]) -> float | None:
        return sum(s["keys"].values()) if s.get("keys") else None

    return {
        name: round(slope_per_hour(points(value)), 2)
        for name, value in (
            ("fds", summed("fds")),
            ("tasks", summed("tasks")),
            ("connections", lambda s: s.get("connections")),
            ("redis_mib", mib),
            ("redis_keys", keys),
            ("stream_entries", lambda s: s.get("stream_entries")),
        )
    }


def settled_of(reading: Mapping[str, Any]) -> Settled:
    return Settled(
        reading["tasks"], reading["fds"], reading["rss"], reading["connections"], reading["keys"]
    )


def pause_problems(
    pauses: Sequence[Mapping[str, Any]], key_slack: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Each pause after the first against the first (the baseline), by
    :func:`benchmarks.soak_check.verdict` (within 10% and its slack), and
    whether it settled: ``key_slack[kind]`` more keys are allowed per room
    created since the baseline, and the pause's own ``key_slack`` more."""
    if not pauses:
        return []
    base = pauses[0]
    judged = []
    for pause in pauses[1:]:
        new_rooms = pause["rooms_created"] - base["rooms_created"]
        slack = {kind: n * new_rooms for kind, n in key_slack.items()}
        for kind, n in pause.get("key_slack", {}).items():
            slack[kind] = slack.get(kind, 0) + n
        problems = verdict(settled_of(base["reading"]), settled_of(pause["reading"]), slack)
        if not pause["settled"]:
            problems.append("did not settle within the pause")
        judged.append({"t": pause["t"], "problems": problems})
    return judged


def judge(record: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of a soak's figures: rows (check, value, goal, passed) and
    the problems (empty: passed)."""
    duration = record["duration_s"]
    samples = record["samples"]
    segments = rss_segments(samples, duration)
    rss = weighted_rss_slope(segments)
    pauses = pause_problems(record["pauses"], record.get("key_slack_per_new_room", {}))
    slopes = totals_slopes(samples, duration)
    delivery = record["delivery"]
    rows: list[list[Any]] = []

    def row(check: str, value: Any, goal: str, passed: bool | None) -> None:
        rows.append([check, value, goal, passed])

    at_pauses = pause_rss_slope(record["pauses"])
    row(
        "worker RSS at the pauses, largest worker, slope (%/h)",
        "n/a" if at_pauses is None else at_pauses,
        f"< {RSS_GOAL_PERCENT_PER_HOUR:g}",
        None if at_pauses is None else at_pauses < RSS_GOAL_PERCENT_PER_HOUR,
    )
    row(
        "worker RSS slope within worker lives, weighted (%/h)",
        "n/a" if rss is None else round(rss, 2),
        "(shown)",
        None,
    )
    if segments:
        worst = max(s["percent_per_hour"] for s in segments)
        row("worker RSS slope, steepest life (%/h)", worst, "(shown)", None)
    for name, unit in (
        ("fds", "fds"),
        ("tasks", "tasks"),
        ("connections", "streams"),
        ("redis_mib", "MiB"),
        ("redis_keys", "keys"),
        ("stream_entries", "entries"),
    ):
        row(
            f"{name.replace('_', ' ')} slope while churning ({unit}/h)",
            slopes[name],
            "(shown)",
            None,
        )
    failed_pauses = [p for p in pauses if p["problems"]]
    row(
        f"pauses back to the first pause's reading (within {GROWTH:.0%})",
        f"{len(pauses) - len(failed_pauses)} of {len(pauses)}",
        "all",
        bool(pauses) and not failed_pauses,
    )
    for name in ("lost", "duplicates", "out_of_order"):
        row(f"steady streams: {name.replace('_', ' ')}", delivery[name], "0", delivery[name] == 0)
    row("tracebacks in the server's log", record["tracebacks"], "0", record["tracebacks"] == 0)
    problems = [f"{r[0]}: {r[1]} (goal {r[2]})" for r in rows if r[3] is False]
    problems += [f"pause at {p['t']:.0f} s: {'; '.join(p['problems'])}" for p in failed_pauses]
    return {"rows": rows, "rss_segments": segments, "pauses": pauses, "problems": problems}


def verdict_text(judged: Mapping[str, Any]) -> str:
    lines = []
    for check, value, goal, passed in judged["rows"]:
        mark = {True: "ok", False: "FAIL", None: ""}[passed]
        lines.append(f"  {check}: {value} (goal {goal}) {mark}".rstrip())
    lines.append("  verdict: " + ("FAIL" if judged["problems"] else "passed"))
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------

EVENT_STYLE = {"reload": ("tab:blue", "--"), "kill": ("tab:red", "-"), "redis": ("purple", "-.")}


def plot_names(stem: str) -> dict[str, str]:
    """The PNG of each family, beside the JSON ``stem``.json."""
    return {family: f"{stem}-{family}.png" for family in PLOTS}


def _minutes(samples: Sequence[Mapping[str, Any]]) -> list[float]:
    return [s["t"] / 60 for s in samples]


def _series(ax: Any, samples: Sequence[Mapping[str, Any]], key: Any, label: str) -> None:
    values = [key(s) for s in samples]
    ax.plot(_minutes(samples), [math.nan if v is None else v for v in values], label=label)


def _per_worker(gauge: str, scale: float = 1.0) -> Any:
    def draw(ax: Any, samples: Sequence[Mapping[str, Any]]) -> None:
        for pid, points in worker_series(samples, gauge).items():
            ax.plot([p[0] / 60 for p in points], [p[1] / scale for p in points], label=pid)

    return draw


def _connections(ax: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    _series(ax, samples, lambda s: s.get("connections"), "server: open streams")
    _series(ax, samples, lambda s: s.get("churning"), "churning connections open")
    _series(ax, samples, lambda s: s.get("steady_open"), "steady streams open")


def _redis(ax: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    kinds = sorted({k for s in samples for k in s.get("keys") or {}})
    for kind in kinds:
        _series(ax, samples, lambda s, k=kind: (s.get("keys") or {}).get(k), f"keys: {kind}")
    _series(ax, samples, lambda s: s.get("stream_entries"), "stream entries")
    right = ax.twinx()
    used = [s.get("redis_used_memory") for s in samples]
    right.plot(_minutes(samples), [math.nan if v is None else v / MIB for v in used], "k:")
    right.set_ylabel("used_memory MiB (dotted)")


def _latency(ax: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    for key in ("publish_p50_ms", "publish_p99_ms", "delivery_p50_ms", "delivery_p99_ms"):
        label = key.removesuffix("_ms").replace("_", " ")
        _series(ax, samples, lambda s, k=key: s.get(k), label)
    ax.set_yscale("log")


def _errors(ax: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    kinds = sorted({k for s in samples for k in s.get("errors", {})})
    for kind in kinds:
        _series(ax, samples, lambda s, k=kind: s.get("errors", {}).get(k, 0), kind)


# family: (title, y label, drawing)
PLOTS: dict[str, tuple[str, str, Any]] = {
    "memory": ("worker RSS, per process", "MiB", _per_worker("rss", MIB)),
    "fds": ("worker open fds, per process", "fds", _per_worker("fds")),
    "tasks": ("worker asyncio tasks, per process", "tasks", _per_worker("tasks")),
    "connections": ("connections", "connections", _connections),
    "redis": ("Redis keys by kind, stream entries, memory", "count", _redis),
    "latency": ("latency per interval", "ms", _latency),
    "errors": ("errors per interval, by kind", "count", _errors),
}


def plot(record: Mapping[str, Any], directory: str, stem: str) -> dict[str, str]:
    """Draw one PNG per family into ``directory``; their file names by family."""
    import matplotlib  # noqa: PLC0415  (the bench extra's; only the soak draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = plot_names(stem)
    for family, (title, ylabel, body) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(9, 3.6), dpi=72)
        body(ax, record["samples"])
        for event in record["events"]:
            if event["kind"] in EVENT_STYLE:
                color, style = EVENT_STYLE[event["kind"]]
                ax.axvline(event["t"] / 60, color=color, linestyle=style, linewidth=0.8)
        for pause in record["pauses"]:
            ax.axvspan(pause["from_t"] / 60, pause["t"] / 60, color="0.85", zorder=0)
        ax.set_title(f"{title} (reload: blue --, kill: red, Redis restart: purple -., pause: grey)")
        ax.title.set_fontsize(9)
        ax.set_xlabel("minutes")
        ax.set_ylabel(ylabel)
        handles, _ = ax.get_legend_handles_labels()
        if handles and len(handles) <= 16:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if len(handles) > 6 else 1)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, names[family]))
        plt.close(fig)
    return names
