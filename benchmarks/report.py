"""Write ``BENCHMARKS.rst`` from the JSON files the load generator's runs wrote.

    python -m benchmarks.report benchmarks/results > BENCHMARKS.rst

(a directory stands for the ``*.json`` files in it). It opens with one
summary table, the latest run of each scenario (``benchmarks/summary.py``),
then the method and every run. Every figure in the output comes from those
files (the machine, the command of each run, the tables); the prose around
them is fixed text that describes the method, not the results.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .soak_verdict import plot_names
from .summary import PER_MESSAGE, quotients, summary
from .tables import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO_ORDER = (
    "fanout",
    "capacity",
    "rooms",
    "idle",
    "storm",
    "publish",
    "reload",
    "many",
    "soak",
)
TITLES = {
    "fanout": "fanout: one room, many streams",
    "capacity": "capacity: the highest delivery rate",
    "rooms": "rooms: cost per message, few rooms against many",
    "idle": "idle: memory per connection",
    "storm": "storm: everyone connects at once",
    "publish": "publish: POSTs as fast as the connections can send them",
    "reload": "reload: every client moved to new workers (bare: opened from scratch)",
    "many": "many: 100,000 streams held, then one message to all",
    "soak": "soak: hours of churn and faults",
}

HEAD = """\
==========
Benchmarks
==========

.. This file is generated: python -m benchmarks.report benchmarks/results
   Do not edit it by hand; change benchmarks/report.py or rerun the benchmark.
"""

INTRO = """\
One harness, ``python -m benchmarks.loadgen``, drives several servers under
the same load, side by side in one run, each with the same number of
processes (2 unless stated) on one private ``redis-server`` that the harness
starts (flushed between targets), and prints the ratios of the chat server to
the bare broadcaster and to python-socketio, and of each variant of the chat
server (the same server with one thing changed) to the chat server itself.

The targets
===========

- **chat**: this project's server, ``python -m server``, with its per-session
  and per-address limits raised through ``CHAT_*`` environment variables
  (every client of the load generator comes from one machine), otherwise its
  defaults. Its clients are anonymous visitors.
- **chat-signed**: the same server started the same way, plus an HS256
  sign-in secret (``auth_jwt_secret``; ``anonymous`` keeps its default), and
  every client signed in as the application's programs do: each stream as
  its own user (``sub`` ``bench-<n>``, a name, an ``exp`` hours away) with
  ``Authorization: Bearer <token>`` on its SSE request or WebSocket upgrade,
  each publishing sender with a token of its own on every ``POST`` and no
  cookie (no session is made). The tokens are made with PyJWT before the
  target is measured. Its details list the room's online users as the server
  sees them (how many of them have the tokens' ids and names), and each
  sender's first message must come back as its token's user, or the run
  fails.
- **chat-api**: the same server with one server API key (publish scope);
  every publishing sender posts through ``POST
  /server/v1/rooms/{room}/messages`` with ``Authorization: Bearer <secret>``
  and ``{"text", "user_id": "bench-sender-<i>"}``, no cookie; each sender's
  first message must come back as its user's, or the run fails. Its streams
  are anonymous, as chat's.
- **chat-webhooks**: the same server with ``webhook_url`` pointing at a
  receiver the harness runs in a process of its own
  (``benchmarks/hook_receiver.py``: aiohttp, 204 at once, signatures
  checked; its CPU is reported apart, not as the server's) and
  ``webhook_secret``. After the deliveries the harness waits, within the
  window whose CPU it counts, until the receiver has every published
  message's event; one missing fails the run.
- **chat-features**: the same server with chat's settings, its clients
  using edits and typing as a chat's users do: every tenth request of the
  publishing schedule is an edit instead of a new message (a ``PATCH`` by
  the sender of the last message it posted, as its author), and every
  stream's user says it is typing once every 10 s, the streams taking turns
  evenly (a WebSocket stream with the ``{"type": "typing"}`` frame, an SSE
  stream's user with ``POST .../typing`` and its stream's session cookie).
  A delivery is a new message's or an edit's arrival (``message_updated``),
  each checked once and in order per stream; typing notices are counted
  apart, their cost is in the server's CPU. In a room over
  ``presence_list_max`` (200) the server sends no typing notices.
- **bare-typing**: the bare broadcaster (below) under chat-features' typing:
  its WebSocket streams send the same frame (read and ignored), its SSE
  streams' users POST ``/api/rooms/{room}/typing`` (answered 204, nothing
  else: what a room that shows nobody typing needs), without a cookie (it
  gives no sessions). It cannot edit, so all its requests are new messages:
  as many deliveries as chat-features. bare-typing/bare is what that typing
  costs the least server, the yardstick for chat-features/chat: its goal
  is on chat-features/chat over bare-typing/bare, round by round.
- **bare**: ``benchmarks/peer_bare.py``, the Python ceiling: the least an
  aiohttp server on uvloop can do to deliver chat messages through Redis. N
  forked processes share one listening socket, each with one Redis pub/sub
  connection (``redis.asyncio``); a ``POST`` takes its id from a per-room
  ``INCR`` and ``PUBLISH``\\ es in one Lua script (no history, no session, no
  rate limit); each process encodes each message once and writes the same
  bytes to every local connection's transport, as WebSocket frames
  (compression off) and SSE chunks in the chat server's own wire format.
- **socketio**: ``benchmarks/peer_socketio.py``, what a Python user would
  most likely pick instead: python-socketio's ``AsyncServer`` on aiohttp with
  ``AsyncRedisManager``, one process per worker on one port
  (``SO_REUSEPORT``), an HTTP ``POST`` endpoint that emits to the room. It
  has no SSE: its SSE figures are n/a, and in mixed runs all its clients use
  WebSocket.

Ratios are chat/bare (how far from the ceiling; 1.00 is as cheap as it gets)
and chat/socketio; each variant in a run is shown over chat: chat-signed/chat
is what signing in costs (fan-out: CPU per delivery and per connect; storm:
CPU per opened stream), chat-api/chat what publishing through the server
API costs (CPU per message), chat-webhooks/chat what webhooks cost (the POST
round trip's p99 at 100 msg/s, CPU per message), chat-features/chat what
edits and typing cost (CPU per delivery), bare-typing/bare what the same
typing costs the bare broadcaster. For times, CPU and memory
lower is better; for delivery rates higher is better.

How it measures
===============

- **Clients**: asyncio protocols parsed by hand (no task per message), so the
  load generator, which shares the machine, leaves as much CPU as it can to
  the servers. WebSocket clients offer ``permessage-deflate`` as browsers do
  (python-socketio's server accepts it and compresses every frame for every
  connection; the chat server and the bare broadcaster decline it), answer
  pings, and socket.io clients speak Engine.IO 4 / Socket.IO 5. Every stream
  is a new visitor (no cookie), or, for **chat-signed**, a user of its own
  with its own token. Streams are spread evenly over the server's
  processes: one that lands on a process that has its share is closed and
  opened again (the details show where they landed by themselves).
- **Publishing**: HTTP ``POST`` on a fixed schedule (message *i* due at
  *start + i/rate*) by ``--senders`` concurrent senders (8 unless the
  command says otherwise) with keep-alive connections (aiohttp), each its
  own visitor (a session cookie) or, for **chat-signed**, its own token
  user, for **chat-api** the server API's key; in **publish**, each of C
  connections POSTs its next message as soon as its last was answered. The
  text of each message carries its sequence number and the time its ``POST``
  started.
- **Latency**: from the start of the ``POST`` to the arrival of the frame at
  the subscriber, on one clock (the load generator's).
- **Lost, duplicate, out of order**: per stream, by sequence number, against
  every message answered 201 (for **chat-features**, and every edit answered
  200); order by message id (an edit's: its own entry's id). After the publishing the
  harness waits until every stream has every message, or until nothing
  arrived for a while.
- **CPU**: user + system time from ``/proc/PID/stat`` of every process of the
  server (the process tree: the chat server's main process and workers, the
  bare broadcaster's parent and children, the socket.io processes), of the
  ``redis-server`` process and of the load generator, over the publishing
  window and the drain after it. The server's CPU while connecting is
  counted over the opening of the streams; per connect, every stream the
  server opened counts, those closed again to balance the processes
  included.
- **Memory per connection**: the summed RSS (``/proc/PID/statm``) of the
  server's processes with the streams open (after settling), minus the same
  before them (after a warm-up), divided by the number of streams.
"""

LIMITS = """\
Limits of this benchmark
========================

- The load generator, Redis and the servers share the machine's cores; the
  load generator's CPU is reported with each measurement. Where it is near a
  full core, the figures measure the machine as much as the server, and the
  highest delivery rates (``capacity``) are lower bounds for every target.
- Small messages (a short text), one machine, one Redis, no TLS, no proxy.
  On a shared virtual machine latencies in particular vary from run to run
  (a POST round trip's p99 by 10-30 % between two runs of the same server);
  CPU per message and memory per connection vary less. A run with
  ``--rounds N`` measures each case N times, the targets in the command's
  order, then reversed, and so on (each round's table is under the run); a
  variant is then judged by the median of its N ratios over chat, each
  from one round, with their range beside it. Otherwise one run per figure.
- CPU times are counted in the kernel's clock ticks (see the machine): short
  runs give coarse CPU figures.
"""


def json_files(paths: Sequence[str]) -> list[str]:
    """The files named, and the ``*.json`` files in the directories named."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "*.json")))
        elif os.path.exists(path):
            files.append(path)
        else:
            print(f"benchmarks.report: no {path}; skipped", file=sys.stderr)
    return files


def load(paths: Sequence[str]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for path in json_files(paths):
        with open(path) as f:
            run = json.load(f)
        run["_path"] = path
        run["_name"] = unique_name(path, {r["_name"] for r in runs})
        runs.append(run)
    order = {name: i for i, name in enumerate(SCENARIO_ORDER)}
    runs.sort(key=lambda r: (order.get(r["scenario"], len(order)), r["_path"]))
    return runs


def unique_name(path: str, taken: set[str]) -> str:
    """The run's name in the report and its link target: its file's name,
    made unique (reStructuredText matches link names in any case)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    base = "-".join("".join(c if c.isalnum() else " " for c in stem).split()) or "run"
    taken = {name.lower() for name in taken}
    name, n = base, 1
    while name.lower() in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def literal(value: Any) -> str:
    return f"``{value}``"


def machine_text(machine: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    commit = machine.get("commit") or "unknown"
    if machine.get("uncommitted_changes"):
        commit += " (with uncommitted changes)"
    return "\n".join(
        [
            f"- CPU: {machine['cpu_model']}, {machine['cores']} cores; "
            f"{machine['memory_gib']} GiB of memory",
            f"- Linux {machine['kernel']}; {machine['python']}; redis-server "
            f"{machine['redis_server']}",
            f"- {packages}",
            f"- open files allowed per process: {machine.get('fd_limit', 'unknown')}; "
            f"CPU clock ticks per second: {machine.get('clock_ticks_per_s', 'unknown')}",
            f"- source at commit {literal(commit)}",
        ]
    )


def steps_table(steps: list[dict[str, Any]]) -> str:
    headers = ["msg/s", "deliveries/s", "p50 ms", "p99 ms", "lost", "server CPU %"]
    headers += ["load generator CPU %", "verdict"]
    rows = [
        [
            f"{s['rate']:.4g}",
            f"{s['deliveries_per_s']:.0f}",
            f"{s['latency_p50_ms']:.1f}",
            f"{s['latency_p99_ms']:.1f}",
            f"{s['lost']}",
            f"{s['server_cpu_percent']:.0f}",
            f"{s['loadgen_cpu_percent']:.0f}",
            s["failed"] or "passed",
        ]
        for s in steps
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        return "  ".join([*cells, row[-1].ljust(widths[-1])]).rstrip()

    return "\n".join([rule, line(headers), rule, *map(line, rows), rule])


def details(name: str, figures: dict[str, Any]) -> list[str]:
    """Bullet points about one target's measurement."""
    if "na" in figures:
        return [f"- {name}: n/a, {figures['na']}."]
    lines = []
    if "error" in figures:
        lines.append(f"- {name}: could not be measured: {literal(figures['error'])}")
    facts = []
    for key, value in figures.get("details", {}).items():
        if value or value == 0:
            facts.append(f"{key.replace('_', ' ')} {literal(value)}")
    for key in (
        "publish_failure_kinds",
        "typing_refused_kinds",
        "reconnect_reasons",
        "failed_reason",
    ):
        if figures.get(key):
            facts.append(f"{key.replace('_', ' ')} {literal(figures[key])}")
    if figures.get("other_events"):
        mib = figures.get("other_mib")
        size = f" ({mib:.1f} MiB)" if isinstance(mib, (int, float)) else ""
        facts.append(f"other events received (presence, pings) {figures['other_events']}{size}")
    facts.append(f"exit codes after SIGTERM {literal(figures.get('server_exit_codes'))}")
    problems = figures.get("server_log_problems") or []
    facts.append(f"error lines in the server's log: {len(problems)}")
    lines.append(f"- {name}: " + "; ".join(facts) + ".")
    lines += [f"  First: {literal(problems[0])}"] if problems else []
    return lines


def run_text(run: dict[str, Any]) -> str:
    parts = [
        run["description"][0].upper() + run["description"][1:] + ".",
        "",
        "::",
        "",
        "    " + run["command"],
        "",
        f"Started {run['started_at']}, took {run.get('elapsed_s', 0):.0f} s, at commit "
        f"{literal(run['machine'].get('commit') or 'unknown')}"
        + (" with uncommitted changes" if run["machine"].get("uncommitted_changes") else "")
        + f"; {run['options']['workers']} processes per target.",
        "",
    ]
    for case in run["cases"]:
        parts += [f"**{case['label']}**", "", render(run["metrics"], case["results"]), ""]
        for name, figures in case["results"].items():
            if figures.get("steps"):
                parts += [f"{name}, step by step:", "", steps_table(figures["steps"]), ""]
        for name, figures in case["results"].items():
            parts += details(name, figures)
        parts.append("")
    parts += many_against_few(run)
    parts += soak_section(run)
    if run.get("problems"):
        parts += [f"The run failed its check: {literal('; '.join(run['problems']))}.", ""]
    return "\n".join(parts)


def many_against_few(run: dict[str, Any]) -> list[str]:
    """For a rooms run: each target's cost per message with the most rooms
    divided by its cost with the fewest."""
    if run["scenario"] != "rooms" or len(run["cases"]) < 2:
        return []
    label, figures = quotients(run)
    metrics = [(f"{text}, {label}", key, "{:.2f}", False) for text, key in PER_MESSAGE]
    return [
        "**Many rooms against few**: each target's cost per message at the most rooms"
        " divided by its cost at the fewest.",
        "",
        render(metrics, figures),
        "",
    ]


def soak_section(run: dict[str, Any]) -> list[str]:
    """For a soak run: its verdict as a table, and its plots (the PNGs beside its
    JSON, linked by their path from the repository's root, where
    ``BENCHMARKS.rst`` is)."""
    if run["scenario"] != "soak":
        return []
    figures = run["cases"][0]["results"].get("chat", {})
    judged = figures.get("verdict")
    if not judged:
        return []
    headers = ["check", "value", "goal", "passed"]
    cells = [
        [str(check), str(value), str(goal), {True: "yes", False: "NO", None: ""}[passed]]
        for check, value, goal, passed in judged["rows"]
    ]
    widths = [max(len(r[i]) for r in [headers, *cells]) for i in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    verdict = "FAIL: " + "; ".join(judged["problems"]) if judged["problems"] else "passed"
    parts = [
        f"**Verdict**: {verdict}. Faults: "
        + ", ".join(
            f"{e['kind']} at {e['t']:.0f} s" for e in figures["events"] if e["kind"] != "pause"
        )
        + f"; {len(figures['pauses'])} pauses.",
        "",
        "\n".join([rule, line(headers), rule, *map(line, cells), rule]),
        "",
    ]
    folder = os.path.dirname(run["_path"])
    stem = os.path.splitext(os.path.basename(run["_path"]))[0]
    for family, name in plot_names(stem).items():
        path = os.path.join(folder, name)
        if os.path.exists(path):
            # (BENCHMARKS.rst is at the root, however the results were named.)
            link = os.path.relpath(path, ROOT)
            parts += [f".. image:: {link}", f"   :alt: soak: {family}", ""]
    return parts


def report(runs: list[dict[str, Any]]) -> str:
    out = [HEAD]
    if runs:
        out.append(summary(runs))
    out.append(INTRO)
    out.append(heading("Reproduce", "="))
    out.append(
        "From a checkout, on Linux (the harness reads ``/proc``), with the\n"
        "``bench`` extra installed (``pip install -e '.[bench]'``), on an otherwise\n"
        "idle machine: each command below is the exact command of a run reported\n"
        "here. ``python -m benchmarks.loadgen --help`` lists every option; the\n"
        "README's Benchmarks section explains the scenarios. Then::\n\n"
        "    python -m benchmarks.report benchmarks/results > BENCHMARKS.rst\n"
    )
    if not runs:
        out.append(
            "No results yet: run ``benchmarks/acceptance.sh`` (the commands are in the\n"
            "README), then regenerate this file.\n"
        )
    machines: list[dict[str, Any]] = []
    for run in runs:
        machine = {k: v for k, v in run["machine"].items() if k not in ("commit",)}
        if machine not in machines:
            machines.append(machine)
    if machines:
        out.append(heading("The machine", "="))
        if len(machines) > 1:
            out.append("The runs were made on more than one machine or setup:\n")
        for run_machine in machines:
            full = next(r["machine"] for r in runs if _same(r["machine"], run_machine))
            out.append(machine_text(full) + "\n")
        out.append(heading("Results", "="))
    for run in runs:
        out.append(f".. _{run['_name']}:\n")
        out.append(heading(TITLES.get(run["scenario"], run["scenario"]), "-"))
        out.append(run_text(run))
    out.append(LIMITS)
    return "\n".join(out).rstrip() + "\n"


def _same(machine: dict[str, Any], reduced: dict[str, Any]) -> bool:
    return {k: v for k, v in machine.items() if k != "commit"} == reduced


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Print BENCHMARKS.rst built from the load generator's JSON results.",
    )
    parser.add_argument(
        "results", nargs="*", help="JSON files written with --json, or directories of them"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(report(load(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
