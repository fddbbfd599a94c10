"""The table that opens ``BENCHMARKS.rst``: the latest run of each scenario.

One row per scenario (a scenario run with another transport or number of
streams is a row of its own), from the run that started last: its headline
figures for each target, the ratios of the chat server to the others, and a
link to the run's full section. Labels, formats and figures all come from the
run's JSON; this module only chooses which rows of it are the headline.

Under the table, once a run measured the chat server both as it is and as
one of its variants (``chat-signed``, ``chat-api``, ``chat-webhooks``,
``chat-features``), a
"variants" block gives a line for each such variant: its figures over chat's
from the latest such run of each scenario in ``VARIANTS``, each beside its
goal.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

from .tables import BARE, OTHERS, OURS, cell, ratio

# The headline of each scenario: keys of the run's own metrics, in order.
# ``rooms`` has its own: each target's cost per message, many rooms over few.
HEADLINES = {
    "fanout": ("fan-out", ("server_cpu_ms_per_1k_deliveries", "latency_p99_ms", "lost")),
    "capacity": ("capacity", ("capacity_deliveries_per_s",)),
    "rooms": ("rooms", ()),
    "idle": ("idle", ("memory_per_connection_kib", "fresh_memory_per_connection_kib")),
    "storm": ("storm", ("server_cpu_ms_per_connect", "opened")),
    "publish": ("publishing", ("published_per_s", "server_cpu_ms_per_message")),
    "soak": ("soak", ("lost", "rss_percent_per_hour", "tracebacks")),
    "reload": ("reload", ("all_back_s", "steady_latency_p99_ms", "lost", "http_503")),
    "many": ("many", ("heartbeat_slow_held", "latency_p99_ms", "lost", "rss_open_mib")),
}
# Scenarios the table names only once they have a run (no "not run yet" row).
ONCE_RUN = ("publish", "soak", "reload", "many")
TRANSPORTS = ("ws", "sse", "mixed")
TARGETS = (OURS, *OTHERS)

NOTES = """\
Each row is the latest run of a scenario (the one that started last); its
name links to its full section under Results, where the earlier runs follow.
Ratios are chat/bare and chat/socketio: for deliveries per second and
streams opened higher is better, for everything else lower. "not run": that
run left the target out (``--targets``); "n/a": the target cannot take part
(python-socketio has no SSE). rooms: each target's server CPU per message
with the most rooms divided by the same with the fewest; the chat server's
quotient should be at most 1.5 times the bare broadcaster's. A run measured
in rounds (``--rounds``): each figure the median of its rounds.
"""


@dataclasses.dataclass(frozen=True)
class Variant:
    """What the variants block says of a variant: ``<variant>/chat`` for these
    figures (key, and the highest ratio its goal allows, or None) of the latest
    run of each scenario that measured both, and these figures of its own."""

    title: str
    what: str
    figures: dict[str, tuple[tuple[str, float | None], ...]]
    own: tuple[str, ...] = ()
    rate: bool = False  # the run's publishing rate matters to the goal
    # The bare broadcaster under the same load, where the run has it: its
    # figures over bare's beside the variant's over chat's, and the goals then
    # judge the variant's ratio over its twin's (what bare itself pays for the
    # same load is no cost of ours).
    twin: str | None = None


CPU_PER_MESSAGE = "server_cpu_ms_per_message"
VARIANTS = {
    "chat-signed": Variant(
        "Sign-in cost",
        "every client signed in with a token, streams and publishers",
        {
            "fanout": (
                ("server_cpu_ms_per_1k_deliveries", 1.1),
                ("connect_server_cpu_ms_per_connect", 1.2),
            ),
            "storm": (("server_cpu_ms_per_connect", 1.2),),
        },
    ),
    "chat-api": Variant(
        "Publishing through the server API",
        "every message POSTed to /server/v1/rooms/{room}/messages with a key",
        {
            "publish": ((CPU_PER_MESSAGE, 1.0),),
            "fanout": ((CPU_PER_MESSAGE, 1.0), ("server_cpu_ms_per_1k_deliveries", None)),
        },
    ),
    "chat-webhooks": Variant(
        "Webhooks on",
        "every message's event POSTed to a receiver of the harness's",
        {"fanout": (("publish_rtt_p99_ms", 1.1), (CPU_PER_MESSAGE, None))},
        own=("webhook_missing", "webhook_latency_p99_ms"),
        rate=True,
    ),
    "chat-features": Variant(
        "Edits and typing",
        "a tenth of the requests edits, every stream typing, by default every 10 s; a "
        "delivery is a new message's or an edit's",
        {"fanout": (("server_cpu_ms_per_1k_deliveries", 1.1),)},
        own=("typing_sent", "typing_received"),
        rate=True,
        twin="bare-typing",
    ),
}
VARIANTS_TEXT = (
    "Variants of the chat server, each over the same server unchanged in the "
    "same run (lower is better; a goal is the highest ratio it allows):"
)

# The rooms scenario's question: does a message cost more when there are more rooms?
PER_MESSAGE = (
    ("server CPU per message", "server_cpu_ms_per_message"),
    ("Redis CPU per message", "redis_cpu_ms_per_message"),
)


def started(run: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(run["started_at"]).astimezone(datetime.UTC)


def variant(run: dict[str, Any]) -> tuple[str, str, int]:
    """What makes two runs the same scenario: its name, transport and size."""
    options = run.get("options", {})
    return run["scenario"], options.get("transport", ""), options.get("subscribers", 0)


def latest(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run that started last of each variant, in the report's order."""
    newest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in runs:
        key = variant(run)
        if key not in newest or started(run) > started(newest[key]):
            newest[key] = run
    order = {name: i for i, name in enumerate(HEADLINES)}

    def place(key: tuple[str, str, int]) -> tuple[int, str, int, str, int]:
        scenario, transport, size = key
        known = TRANSPORTS.index(transport) if transport in TRANSPORTS else len(TRANSPORTS)
        return order.get(scenario, len(order)), scenario, known, transport, size

    return [newest[key] for key in sorted(newest, key=place)]


def quotients(run: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """For a rooms run: each target's cost per message with the most rooms
    divided by its cost with the fewest, and the label of that quotient."""
    cases = sorted(run["cases"], key=lambda case: case["params"]["rooms"])
    few, many = cases[0], cases[-1]
    result: dict[str, dict[str, Any]] = {}
    for name, figures in few["results"].items():
        other = many["results"].get(name, {"na": "not run"})
        if "na" in figures or "na" in other or "error" in figures or "error" in other:
            result[name] = {"error": True} if "na" not in figures else {"na": True}
            continue
        result[name] = {
            key: other[key] / figures[key] for _, key in PER_MESSAGE if figures.get(key)
        }
    return f"K={many['params']['rooms']} / K={few['params']['rooms']}", result


def headline(run: dict[str, Any]) -> tuple[list[Sequence[Any]], dict[str, dict[str, Any]]]:
    """The run's headline metrics, as (label, key, fmt, ratio), and the figures."""
    scenario = run["scenario"]
    if scenario == "rooms" and len(run["cases"]) > 1:
        label, figures = quotients(run)
        text, key = PER_MESSAGE[0]
        return [(f"{text}, {label}", key, "{:.2f}", True)], figures
    metrics = {metric[1]: metric for metric in run["metrics"]}
    keys = HEADLINES.get(scenario, ("", ()))[1]
    chosen = [metrics[key] for key in keys if key in metrics]
    if not chosen:  # a scenario this module does not know: its first compared rows
        chosen = [metric for metric in run["metrics"] if metric[3]][:2]
    return chosen, first_case(run)


def first_case(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's figures in the run's first case; for a case measured in
    rounds, each figure the median of its rounds (a target that failed or
    could not take part in a round: as in the first)."""
    if not run["cases"]:
        return {}
    first = run["cases"][0]
    label = first["params"].get("case")
    if label is None:
        return dict(first["results"])
    rounds = [case["results"] for case in run["cases"] if case["params"].get("case") == label]
    figures: dict[str, dict[str, Any]] = {}
    for name, own in first["results"].items():
        mine = [results.get(name, {"na": True}) for results in rounds]
        if not all(measured(result) for result in mine):
            figures[name] = own
            continue
        figures[name] = dict(own)
        for key in own:
            values = [result.get(key) for result in mine]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                figures[name][key] = statistics.median(values)
    return figures


def rows(run: dict[str, Any]) -> list[list[str]]:
    """One row per headline figure: label, a cell per target, the two ratios."""
    metrics, figures = headline(run)
    out = []
    for label, key, fmt, with_ratio in metrics:
        row = [label]
        row += [cell(figures[n], key, fmt) if n in figures else "not run" for n in TARGETS]
        for other in OTHERS:
            wanted = with_ratio and OURS in figures
            row.append(ratio(figures[OURS], figures.get(other), key) if wanted else "")
        out.append(row)
    return out


def group(run: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    scenario, transport, size = variant(run)
    name = HEADLINES.get(scenario, (scenario, ()))[0]
    when = started(run)
    links = [f"`{run['_name']}`_,", when.strftime("%Y-%m-%d"), when.strftime("%H:%M UTC")]
    if run.get("problems"):
        links.append("failed its check")
    return [f"{name}:", f"{size} {transport}"], rows(run), links


def summary(runs: Sequence[dict[str, Any]]) -> str:
    """The summary table and its notes; "" when there is no run."""
    if not runs:
        return ""
    newest = latest(runs)
    groups = []
    for scenario, (name, _) in HEADLINES.items():
        mine = [group(run) for run in newest if run["scenario"] == scenario]
        if mine or scenario not in ONCE_RUN:
            groups += mine or [([f"{name}:"], [["not run yet"]], [])]
    groups += [group(run) for run in newest if run["scenario"] not in HEADLINES]
    headers = ["scenario", "figure", *TARGETS, *(f"{OURS}/{o}" for o in OTHERS), "latest run"]
    block = variants_block(runs)
    return grid(headers, groups) + "\n\n" + (block + "\n\n" if block else "") + NOTES


def measured(figures: dict[str, Any] | None) -> bool:
    return figures is not None and "na" not in figures and "error" not in figures


def both_measured(results: dict[str, Any], name: str) -> bool:
    """Whether a case measured the chat server and its variant ``name``."""
    return measured(results.get(OURS)) and measured(results.get(name))


def short_label(label: str) -> str:
    """A row's label without its unit (``... per message (ms)``: ``... per message``)."""
    return re.sub(r" [(][^)]*[)]$", "", label)


def quotient(results: dict[str, Any], name: str, base: str, key: str) -> float | None:
    """``<name>/<base>`` for one figure of one round; None where either lacks it."""
    under, value = results[base].get(key), results[name].get(key)
    if isinstance(under, (int, float)) and isinstance(value, (int, float)) and under > 0:
        return value / under
    return None


def compared(
    rounds: Sequence[dict[str, Any]],
    name: str,
    key: str,
    goal: float | None,
    base: str = OURS,
    twin: str | None = None,
) -> str:
    """``<name>/<base>`` for one figure, and whether it met its goal; measured
    in several rounds, the median of the rounds' ratios, and their range. With
    a twin, each round's ratio is divided by ``<twin>/bare`` of the same round:
    what the variant adds to chat over what the same load adds to bare."""
    if len(rounds) == 1 and twin is None:
        results = rounds[0]
        text = ratio(results[name], results[base], key)
        under = results[base].get(key)
        if goal is not None and isinstance(under, (int, float)) and under > 0:
            mine = quotient(results, name, base, key)
            met = mine is not None and mine <= goal
            text += f" (goal {goal:.1f}: {'met' if met else 'missed'})"
        return text
    quotients = []
    for results in rounds:
        mine = quotient(results, name, base, key)
        yardstick = quotient(results, twin, BARE, key) if twin else 1.0
        if mine is not None and yardstick:
            quotients.append(mine / yardstick)
    if not quotients:
        return "n/a"
    middle = statistics.median(quotients)
    verdict = f"goal {goal:.1f}: {'met' if middle <= goal else 'missed'}" if goal else ""
    if len(quotients) == 1:
        return f"{middle:.2f}" + (f" ({verdict})" if verdict else "")
    text = f"{middle:.2f} (median of {len(quotients)} rounds, {min(quotients):.2f} to "
    text += f"{max(quotients):.2f}"
    return text + (f"; {verdict})" if verdict else ")")


def own_figure(rounds: Sequence[dict[str, Any]], name: str, key: str, fmt: str) -> str:
    """The variant's own figure: its value, or each round's where they differ."""
    cells = [cell(results[name], key, fmt) for results in rounds]
    return cells[0] if len(set(cells)) == 1 else "/".join(cells)


def variant_figures(run: dict[str, Any], name: str, spec: Variant) -> str:
    """Each of the variant's figures in this run (each case's, in a run of
    several; a case measured in rounds, judged by the median of its rounds)."""
    metrics = {metric[1]: metric for metric in run["metrics"]}
    cases: dict[str, list[dict[str, Any]]] = {}
    for case in run["cases"]:
        if both_measured(case["results"], name):
            cases.setdefault(case["params"].get("case", case["label"]), []).append(case)
    parts = []
    for label, same in cases.items():
        rounds = [case["results"] for case in same]
        figures = [(key, goal) for key, goal in spec.figures[run["scenario"]] if key in metrics]
        twin = spec.twin
        if twin and all(measured(r.get(twin)) and measured(r.get(BARE)) for r in rounds):
            # The goal is on what the variant adds over what its twin adds to bare.
            texts = [
                f"{short_label(metrics[key][0])} {compared(rounds, name, key, None)}"
                for key, _ in figures
            ]
            texts += [
                f"{twin}/{BARE} under the same load: {short_label(metrics[key][0])} "
                f"{compared(rounds, twin, key, None, BARE)}"
                for key, _ in figures
            ]
            texts += [
                f"{name}/{OURS} over {twin}/{BARE}: {short_label(metrics[key][0])} "
                f"{compared(rounds, name, key, goal, twin=twin)}"
                for key, goal in figures
            ]
        else:
            texts = [
                f"{short_label(metrics[key][0])} {compared(rounds, name, key, goal)}"
                for key, goal in figures
            ]
        texts += [
            f"{metrics[key][0]} {own_figure(rounds, name, key, metrics[key][2])}"
            for key in spec.own
            if key in metrics
        ]
        if len(cases) > 1 and texts:
            texts[0] = f"{same[0]['params'].get('short', label)}: {texts[0]}"
        parts.append(", ".join(texts))
    return "; ".join(parts)


def variant_line(runs: Sequence[dict[str, Any]], name: str, spec: Variant) -> str:
    """The variant's line; "" when no run measured it beside chat."""
    parts = []
    for scenario in spec.figures:
        both = [
            run
            for run in runs
            if run["scenario"] == scenario
            and any(both_measured(case["results"], name) for case in run["cases"])
        ]
        if not both:
            continue
        run = max(both, key=started)
        _, transport, size = variant(run)
        where = f"{size} {transport}"
        if spec.rate:
            where += f" at {run['options'].get('rate', 0):g} msg/s"
        title = HEADLINES.get(scenario, (scenario, ()))[0]
        parts.append(f"{title} ({where}, `{run['_name']}`_): {variant_figures(run, name, spec)}")
    if not parts:
        return ""
    text = f"- {spec.title}, {name}/{OURS} ({spec.what}): {'; '.join(parts)}."
    return textwrap.fill(
        text, 76, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    )


def variants_block(runs: Sequence[dict[str, Any]]) -> str:
    """A line for each variant that some run measured beside chat; "" when none."""
    lines = [variant_line(runs, name, spec) for name, spec in VARIANTS.items()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    return textwrap.fill(VARIANTS_TEXT, 76) + "\n\n" + "\n".join(lines)


def grid(headers: list[str], groups: list[tuple[list[str], list[list[str]], list[str]]]) -> str:
    """A reStructuredText grid table whose first and last cells span each
    group's rows: (first cell's lines, the rows between, last cell's lines)."""
    inner = len(headers) - 2
    bodies = [[row + [""] * (inner - len(row)) for row in rows] for _, rows, _ in groups]
    widths = [max([len(headers[0])] + [len(t) for first, _, _ in groups for t in first])]
    widths += [
        max([len(headers[i + 1])] + [len(row[i]) for body in bodies for row in body])
        for i in range(inner)
    ]
    widths.append(max([len(headers[-1])] + [len(t) for _, _, last in groups for t in last]))

    def rule(char: str) -> str:
        return "+" + "+".join(char * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        texts = [cells[0].ljust(widths[0])]
        texts.append(cells[1].ljust(widths[1]))
        texts += [c.rjust(w) for c, w in zip(cells[2:-1], widths[2:-1], strict=True)]
        texts.append(cells[-1].ljust(widths[-1]))
        return "| " + " | ".join(texts) + " |"

    out = [rule("-"), line(headers), rule("=")]
    for (first, _, last), body in zip(groups, bodies, strict=True):
        height = max(len(first), len(last), 2 * len(body) - 1)
        slots: list[list[str] | None] = []  # a row's cells, or None: a rule between rows
        for i, row in enumerate(body):
            slots += [None, row] if i else [row]
        slots += [[""] * inner] * (height - len(slots))
        for n, cells in enumerate(slots):
            left = first[n] if n < len(first) else ""
            right = last[n] if n < len(last) else ""
            if cells is None:
                middle = "+".join("-" * (w + 2) for w in widths[1:-1])
                out.append(f"| {left.ljust(widths[0])} +{middle}+ {right.ljust(widths[-1])} |")
            else:
                out.append(line([left, *cells, right]))
        out.append(rule("-"))
    return "\n".join(out)
