"""fanout: S streams in one room, messages at a set rate; what each delivery costs.

Acceptance figure: ``--subscribers 1000 --transport ws --rate 10 --duration 20``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..clients import stop_all
from ..measure import (
    MIB,
    Context,
    Metric,
    connect,
    lost_or_duplicated,
    memory,
    publish_and_drain,
    warmed_up,
)
from ..publisher import Publisher
from ..targets import Target

DESCRIPTION = "S streams in one room, messages published at a set rate"
DEFAULTS: dict[str, Any] = {"subscribers": 1000, "transport": "ws", "rate": 10.0, "duration": 20.0}

METRICS = [
    Metric("streams connected", "streams", ratio=False),
    Metric("messages published (201)", "published", ratio=False),
    Metric("publish failures", "publish_failures"),
    Metric("deliveries expected", "expected_deliveries", ratio=False),
    Metric("deliveries per second", "deliveries_per_s"),
    Metric("latency p50 (ms)", "latency_p50_ms", "{:.1f}"),
    Metric("latency p99 (ms)", "latency_p99_ms", "{:.1f}"),
    Metric("latency max (ms)", "latency_max_ms", "{:.1f}"),
    Metric("lost deliveries", "lost"),
    Metric("duplicate deliveries", "duplicates"),
    Metric("out of id order", "out_of_order"),
    Metric("reconnects", "reconnects"),
    Metric("POST round trip p50 (ms)", "publish_rtt_p50_ms", "{:.1f}"),
    Metric("POST round trip p99 (ms)", "publish_rtt_p99_ms", "{:.1f}"),
    Metric("time to connect all (s)", "connect_s", "{:.1f}"),
    Metric("server CPU while connecting (s)", "connect_server_cpu_s", "{:.2f}"),
    Metric("memory per connection (KiB)", "memory_per_connection_kib", "{:.1f}"),
    Metric("server RSS, subscribed (MiB)", "rss_subscribed_mib", "{:.1f}"),
    Metric("server CPU (s)", "server_cpu_s", "{:.2f}"),
    Metric("server CPU per 1k deliveries (ms)", "server_cpu_ms_per_1k_deliveries", "{:.2f}"),
    Metric("Redis CPU (s)", "redis_cpu_s", "{:.2f}"),
    Metric("load generator CPU (% of a core)", "loadgen_cpu_percent", ratio=False),
    Metric("load generator loop lag p99 (ms)", "loadgen_loop_lag_p99_ms", "{:.1f}", ratio=False),
    Metric("schedule lag max (ms)", "schedule_lag_max_ms", "{:.1f}", ratio=False),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    return [
        {
            "label": f"{opts.subscribers} {opts.transport} streams, one room, "
            f"{opts.rate:g} msg/s for {opts.duration:g} s",
            "transport": opts.transport,
        }
    ]


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    room = opts.room
    kinds = await warmed_up(target, ctx, case, room)
    await asyncio.sleep(opts.settle)
    rss_before = memory(target)
    crowd = await connect(target, ctx, [(kind, room) for kind in kinds])
    try:
        await asyncio.sleep(opts.settle)
        rss_subscribed = memory(target)
        publisher = Publisher(target.base_url, opts.senders)
        try:
            await publisher.open(room)
            await asyncio.sleep(0.5)  # the warm-up messages are delivered and ignored
            figures = await publish_and_drain(
                target,
                ctx,
                crowd,
                publisher,
                opts.rate,
                opts.duration,
                lambda seq: room,
                label=target.name,
                drain_timeout=opts.drain_timeout,
            )
        finally:
            await publisher.close()
        figures.update(
            connect_s=crowd.connect_s,
            connect_server_cpu_s=crowd.connect_server_cpu_s,
            rss_before_mib=rss_before / MIB,
            rss_subscribed_mib=rss_subscribed / MIB,
            rss_end_mib=memory(target) / MIB,
            memory_per_connection_kib=(rss_subscribed - rss_before) / len(crowd.live) / 1024,
            details=crowd.details(),
        )
        return figures
    finally:
        await stop_all(crowd.subs)


problems = lost_or_duplicated
