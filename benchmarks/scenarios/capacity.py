"""capacity: the highest delivery rate a target sustains with nothing lost and p99 < 250 ms.

S streams in one room (WebSocket, or SSE with ``--transport sse``). The
publish rate starts at ``--start-rate`` and grows by ``--step-factor`` every
step of ``--step-duration`` seconds (the same connections throughout); a step
passes when every message answered 201 reached every stream (after at most
``--step-drain`` s without progress), no POST failed, the p99 latency (from
the start of each POST to its receipt) is under ``--p99-limit-ms`` and no
message waited that long to be sent (a server slow to answer POSTs holds the
publisher back: the messages come from ``--senders`` concurrent connections,
so with few streams, where the POST rate binds before the fan-out does, raise
``--senders``). The capacity is the delivery rate of the last step
that passed; the search stops at the first step that fails.

Acceptance figures: ``--subscribers 1000 --transport ws`` and ``--transport sse``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..measure import (
    Context,
    Metric,
    connected,
    one_case,
    publish_and_drain,
    publishing,
    warmed_up,
)
from ..tables import is_chat
from ..targets import Target
from . import rows

DESCRIPTION = "raise the publish rate step by step until messages are lost or p99 >= limit"
DEFAULTS: dict[str, Any] = {"subscribers": 1000, "transport": "ws"}

METRICS = [
    rows.STREAMS,
    Metric("capacity: deliveries per second", "capacity_deliveries_per_s"),
    Metric("capacity: messages per second", "capacity_messages_per_s", "{:.1f}"),
    Metric("latency p50 at capacity (ms)", "capacity_latency_p50_ms", "{:.1f}"),
    Metric("latency p99 at capacity (ms)", "capacity_latency_p99_ms", "{:.1f}"),
    Metric("server CPU at capacity (% of a core)", "capacity_server_cpu_percent"),
    Metric("server CPU per 1k deliveries (ms)", "capacity_server_cpu_ms_per_1k", "{:.2f}"),
    Metric("load generator CPU at capacity (%)", "capacity_loadgen_cpu_percent", ratio=False),
    Metric("steps passed", "steps_passed", ratio=False),
    Metric("first failing rate (msg/s)", "failed_rate", "{:.1f}"),
    Metric("load generator CPU, failing step (%)", "failed_loadgen_cpu_percent", ratio=False),
]
STEP_KEYS = (
    "deliveries_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "lost",
    "duplicates",
    "reconnects",
    "publish_failures",
    "schedule_lag_max_ms",
    "server_cpu_percent",
    "server_cpu_ms_per_1k_deliveries",
    "redis_cpu_s",
    "loadgen_cpu_percent",
)


def cases(opts: Any) -> list[dict[str, Any]]:
    return one_case(
        opts,
        f"{opts.subscribers} {opts.transport} streams, one room, from "
        f"{opts.start_rate:g} msg/s x{opts.step_factor:g} every {opts.step_duration:g} s, "
        f"pass: 0 lost and p99 < {opts.p99_limit_ms:g} ms",
    )


def verdict(step: dict[str, Any], p99_limit_ms: float) -> str:
    """Why a step failed, or "" when it passed."""
    reasons = []
    if step["lost"]:
        reasons.append(f"{step['lost']} lost")
    if step["publish_failures"]:
        reasons.append(f"{step['publish_failures']} POST failures")
    if step["latency_p99_ms"] >= p99_limit_ms:
        reasons.append(f"p99 {step['latency_p99_ms']:.0f} ms")
    if step["schedule_lag_max_ms"] >= p99_limit_ms:
        # The POSTs themselves could not keep up: messages waited to be sent.
        reasons.append(f"publishing {step['schedule_lag_max_ms']:.0f} ms behind schedule")
    return ", ".join(reasons)


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    room = opts.room
    kinds = await warmed_up(target, ctx, case, room)
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    async with (
        connected(target, ctx, [(kind, room) for kind in kinds]) as crowd,
        publishing(target, ctx, room, max(0.5, opts.settle)) as publisher,
    ):
        rate = opts.start_rate
        for _ in range(opts.max_steps):
            figures = await publish_and_drain(
                target,
                ctx,
                crowd,
                publisher,
                rate,
                opts.step_duration,
                lambda seq: room,
                label=f"{target.name} {rate:.4g}/s",
                drain_timeout=opts.step_drain,
            )
            step = {"rate": rate} | {key: figures[key] for key in STEP_KEYS}
            step["failed"] = verdict(figures, opts.p99_limit_ms)
            steps.append(step)
            ctx.progress.note(
                f"  {target.name} {rate:.4g} msg/s: "
                f"{figures['deliveries_per_s']:.0f} deliveries/s, "
                f"p99 {figures['latency_p99_ms']:.0f} ms, lost {figures['lost']}"
                + (f" -> fails ({step['failed']})" if step["failed"] else "")
            )
            if step["failed"]:
                failed = step
                break
            best = step
            rate *= opts.step_factor
            await asyncio.sleep(1.0)
    result: dict[str, Any] = {
        "streams": len(crowd.live),
        "steps_passed": len(steps) - (1 if failed else 0),
        "steps": steps,
        "details": crowd.details(),
    }
    if best is not None:
        result |= {
            "capacity_deliveries_per_s": best["deliveries_per_s"],
            "capacity_messages_per_s": best["rate"],
            "capacity_latency_p50_ms": best["latency_p50_ms"],
            "capacity_latency_p99_ms": best["latency_p99_ms"],
            "capacity_server_cpu_percent": best["server_cpu_percent"],
            "capacity_server_cpu_ms_per_1k": best["server_cpu_ms_per_1k_deliveries"],
            "capacity_loadgen_cpu_percent": best["loadgen_cpu_percent"],
        }
    else:
        result["capacity_deliveries_per_s"] = 0.0
    if failed is not None:
        result |= {
            "failed_rate": failed["rate"],
            "failed_reason": failed["failed"],
            "failed_loadgen_cpu_percent": failed["loadgen_cpu_percent"],
        }
    return result


def problems(target: str, figures: dict[str, Any]) -> list[str]:
    if not is_chat(target):
        return []
    return [
        f"duplicates at {s['rate']:.4g} msg/s: {s['duplicates']}"
        for s in figures.get("steps", [])
        if s["duplicates"]
    ]
