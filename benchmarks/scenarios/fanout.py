"""fanout: S streams in one room, messages at a set rate; what each delivery costs.

Acceptance figure: ``--subscribers 1000 --transport ws --rate 10 --duration 20``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..measure import (
    MIB,
    Context,
    Metric,
    connected,
    lost_or_duplicated,
    memory,
    one_case,
    publish_at_rate,
    warmed_up,
)
from ..targets import Target
from . import rows

DESCRIPTION = "S streams in one room, messages published at a set rate"
DEFAULTS: dict[str, Any] = {"subscribers": 1000, "transport": "ws", "rate": 10.0, "duration": 20.0}

METRICS = [
    rows.STREAMS,
    rows.PUBLISHED,
    rows.EDITS,
    rows.PUBLISH_FAILURES,
    Metric("deliveries expected", "expected_deliveries", ratio=False),
    rows.UPDATE_DELIVERIES,
    Metric("deliveries per second", "deliveries_per_s"),
    rows.LATENCY_P50,
    rows.LATENCY_P99,
    Metric("latency max (ms)", "latency_max_ms", "{:.1f}"),
    rows.LOST,
    rows.DUPLICATES,
    Metric("out of id order", "out_of_order"),
    Metric("reconnects", "reconnects"),
    Metric("POST round trip p50 (ms)", "publish_rtt_p50_ms", "{:.1f}"),
    Metric("POST round trip p99 (ms)", "publish_rtt_p99_ms", "{:.1f}"),
    rows.CONNECT_TIME,
    Metric("server CPU while connecting (s)", "connect_server_cpu_s", "{:.2f}"),
    # Streams moved to balance the processes are connects too: per connect, their
    # number (which varies from run to run) leaves the figure alone.
    Metric("server CPU per connect (ms)", "connect_server_cpu_ms_per_connect", "{:.2f}"),
    rows.MEMORY_PER_CONNECTION,
    rows.RSS_SUBSCRIBED,
    rows.SERVER_CPU,
    Metric("server CPU per 1k deliveries (ms)", "server_cpu_ms_per_1k_deliveries", "{:.2f}"),
    Metric("server CPU per message (ms)", "server_cpu_ms_per_message", "{:.3f}"),
    rows.WEBHOOK_MISSING,
    rows.WEBHOOK_LATENCY_P99,
    rows.WEBHOOK_RECEIVER_CPU,
    rows.TYPING_SENT,
    rows.TYPING_REFUSED,
    rows.TYPING_RECEIVED,
    Metric("Redis CPU (s)", "redis_cpu_s", "{:.2f}"),
    rows.LOADGEN_CPU,
    Metric("load generator loop lag p99 (ms)", "loadgen_loop_lag_p99_ms", "{:.1f}", ratio=False),
    Metric("schedule lag max (ms)", "schedule_lag_max_ms", "{:.1f}", ratio=False),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    return one_case(
        opts,
        f"{opts.subscribers} {opts.transport} streams, one room, "
        f"{opts.rate:g} msg/s for {opts.duration:g} s",
    )


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    room = opts.room
    kinds = await warmed_up(target, ctx, case, room)
    await asyncio.sleep(opts.settle)
    rss_before = memory(target)
    async with connected(target, ctx, [(kind, room) for kind in kinds]) as crowd:
        await asyncio.sleep(opts.settle)
        rss_subscribed = memory(target)
        figures = await publish_at_rate(
            target, ctx, crowd, room, lambda seq: room, label=target.name
        )
        figures.update(
            connect_s=crowd.connect_s,
            connect_server_cpu_s=crowd.connect_server_cpu_s,
            connect_server_cpu_ms_per_connect=crowd.connect_server_cpu_s * 1e3 / crowd.connects,
            rss_before_mib=rss_before / MIB,
            rss_subscribed_mib=rss_subscribed / MIB,
            rss_end_mib=memory(target) / MIB,
            memory_per_connection_kib=(rss_subscribed - rss_before) / len(crowd.live) / 1024,
            # (who is online is asked once everything is measured)
            details=crowd.details() | await target.sign_in_details(room),
        )
        return figures


problems = lost_or_duplicated
