"""many: 100,000 connections held, then one message to all of them.

Half SSE, half WebSocket (offering permessage-deflate, as browsers do), all
in one room, opened from :mod:`benchmarks.swarm` processes (10,000 streams
each) that connect from several local addresses (127.0.0.2, .3, ...: one per
10,000 streams, so that no address runs out of ephemeral ports). One server
process may hold at most as many connections as its open-file limit (20,000
here, sockets to Redis and the process's own files included), so the servers
run ``--workers 6`` by default: about 16,700 streams each, spread evenly by
the clients (see ``--no-balance``).

Once every stream is open the run holds them ``--hold`` s (120 by default)
while the chat server's heartbeat ticks over all of them, counting every
tick and loop stall over 100 ms (from its ``/metrics``); then it publishes
one message to the room and waits until every stream has it (or none arrived
for ``--drain-timeout`` s): delivered, lost, duplicated, latency from the
POST to each stream. Memory is the summed RSS of the server's processes with
every stream open.

Acceptance figure: ``--targets chat,bare`` with its defaults.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from ..measure import MIB, Context, Metric, one_case, percentile, publishing
from ..procfs import fd_limit, rss_bytes
from ..tables import is_chat
from ..targets import BenchError, Target, stream_kinds
from . import rows
from .idle import SUMS, held, worker_figures

DESCRIPTION = "100,000 streams held, then one message to all"
DEFAULTS: dict[str, Any] = {
    "subscribers": 100_000,
    "transport": "mixed",
    "workers": 6,
    "hold": 120.0,
}

METRICS = [
    Metric("streams open", "streams", ratio=False),
    Metric("streams that failed", "failed"),
    Metric("time to open all (s)", "connect_s", "{:.1f}"),
    Metric("server CPU while opening (s)", "connect_server_cpu_s", "{:.1f}"),
    Metric("server RSS, all open (MiB)", "rss_open_mib", "{:.0f}"),
    Metric("largest server process RSS (MiB)", "rss_process_max_mib", "{:.0f}"),
    Metric("heartbeat ticks over 100 ms while held", "heartbeat_slow_held"),
    Metric("loop stalls over 100 ms while held", "loop_stalls_held"),
    Metric("longest heartbeat tick, opening included (ms)", "heartbeat_max_ms", "{:.1f}"),
    Metric("deliveries of the message", "delivered", ratio=False),
    rows.LOST,
    rows.DUPLICATES,
    Metric("delivery p50 (ms)", "latency_p50_ms", "{:.0f}"),
    Metric("delivery p99 (ms)", "latency_p99_ms", "{:.0f}"),
    Metric("delivery max (ms)", "latency_max_ms", "{:.0f}"),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    return one_case(
        opts,
        f"{opts.subscribers} idle {opts.transport} streams on {opts.workers} processes, "
        f"held {opts.hold:g} s, then one message to all",
    )


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    kinds = stream_kinds(target, case["transport"], opts.subscribers)
    assert kinds is not None
    per_process = len(kinds) / opts.workers
    if per_process + 1000 > fd_limit():
        raise BenchError(
            f"{len(kinds)} streams on {opts.workers} processes is {per_process:.0f} each, "
            f"over the open-file limit ({fd_limit()}): raise --workers"
        )
    async with held(target, ctx, kinds) as h:
        swarm, pids = h.swarm, h.pids
        opened = swarm.opened_total
        if not opened:
            raise BenchError(f"{target.name}: no stream opened")
        figures: dict[str, float] = {}
        if is_chat(target.name):
            before = await worker_figures(target.base_url)
            await asyncio.sleep(opts.hold)
            figures = await worker_figures(target.base_url)
            for name in SUMS.values():
                figures[f"{name}_held"] = figures.pop(name) - before[name]
        else:
            await asyncio.sleep(opts.hold)
        async with publishing(target, ctx, opts.room, senders=1) as publisher:
            window = await publisher.run(1.0, 1.0, lambda seq: opts.room)
        if len(window.accepted) != 1:
            raise BenchError(f"{target.name}: the message was not accepted: {window.failures}")
        reports = await swarm.report(1, opts.drain_timeout)
        latencies = sorted(ms for r in reports for ms in r["latencies_ms"])
        delivered = sum(r["first_copies"] for r in reports)
        errors: Counter[str] = Counter()
        for report in swarm.reports:
            errors.update(report["errors"])
        return {
            **figures,
            "streams": opened,
            "failed": sum(r["failed"] for r in swarm.reports),
            "connect_s": h.connect_s,
            "connect_server_cpu_s": h.connect_cpu_s,
            "rss_before_mib": h.rss_before / MIB,
            "rss_open_mib": h.rss_open / MIB,
            "rss_process_max_mib": max(rss_bytes([p]) for p in pids) / MIB,
            "delivered": delivered,
            "lost": opened - delivered,
            "duplicates": sum(r["duplicates"] for r in reports),
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "latency_max_ms": latencies[-1] if latencies else None,
            "details": {
                "streams_by_kind": dict(Counter(kinds)),
                "connect_errors": dict(errors),
                "closed_by_server_meanwhile": sum(r["closed_meanwhile"] for r in swarm.reports),
                "swarm_processes": len(swarm.procs),
                "server_processes": len(pids),
                "out_of_order": sum(r["out_of_order"] for r in reports),
            },
        }


def problems(target: str, figures: dict[str, Any]) -> list[str]:
    if not is_chat(target):
        return []
    return [f"{key}: {figures[key]}" for key in ("lost", "duplicates") if figures.get(key)]
