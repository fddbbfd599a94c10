"""rooms: S streams spread evenly over K rooms, messages to random rooms; cost per message.

Whether a message costs the same however many rooms there are: the server's
CPU and Redis' CPU per message (from /proc, over the publishing window and
the drain after it). Every stream is a new visitor (no cookie: a session of
its own on the chat server). Each message goes to a room drawn at random
(``--seed``, the same sequence for every target).

Acceptance figure: ``--subscribers 1000 --rooms 10,1000 --rate 100`` (SSE).
"""

from __future__ import annotations

import asyncio
import random
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

DESCRIPTION = "S streams over K rooms, messages to random rooms: cost per message"
DEFAULTS: dict[str, Any] = {
    "subscribers": 1000,
    "transport": "sse",
    "rate": 100.0,
    "duration": 20.0,
}

METRICS = [
    Metric("streams connected", "streams", ratio=False),
    Metric("rooms", "rooms", ratio=False),
    Metric("messages published (201)", "published", ratio=False),
    Metric("publish failures", "publish_failures"),
    Metric("deliveries", "deliveries", ratio=False),
    Metric("lost deliveries", "lost"),
    Metric("duplicate deliveries", "duplicates"),
    Metric("server CPU per message (ms)", "server_cpu_ms_per_message", "{:.3f}"),
    Metric("Redis CPU per message (ms)", "redis_cpu_ms_per_message", "{:.3f}"),
    Metric("server CPU (% of a core)", "server_cpu_percent"),
    Metric("latency p50 (ms)", "latency_p50_ms", "{:.1f}"),
    Metric("latency p99 (ms)", "latency_p99_ms", "{:.1f}"),
    Metric("server RSS, subscribed (MiB)", "rss_subscribed_mib", "{:.1f}"),
    Metric("time to connect all (s)", "connect_s", "{:.1f}"),
    Metric("load generator CPU (% of a core)", "loadgen_cpu_percent", ratio=False),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    return [
        {
            "label": f"K={k}: {opts.subscribers} {opts.transport} streams over {k} rooms, "
            f"{opts.rate:g} msg/s to random rooms for {opts.duration:g} s",
            "rooms": k,
            "transport": opts.transport,
        }
        for k in opts.rooms
    ]


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    names = [f"r{i}" for i in range(case["rooms"])]
    kinds = await warmed_up(target, ctx, case, names[0])
    crowd = await connect(
        target, ctx, [(kind, names[i % len(names)]) for i, kind in enumerate(kinds)]
    )
    rng = random.Random(opts.seed)
    try:
        await asyncio.sleep(opts.settle)
        rss_subscribed = memory(target)
        publisher = Publisher(target.base_url, opts.senders)
        try:
            await publisher.open(names[0])
            await asyncio.sleep(0.5)
            figures = await publish_and_drain(
                target,
                ctx,
                crowd,
                publisher,
                opts.rate,
                opts.duration,
                lambda seq: names[rng.randrange(len(names))],
                label=f"{target.name} K={len(names)}",
                drain_timeout=opts.drain_timeout,
            )
        finally:
            await publisher.close()
        figures.update(
            rooms=len(names),
            rss_subscribed_mib=rss_subscribed / MIB,
            connect_s=crowd.connect_s,
            details=crowd.details(),
        )
        return figures
    finally:
        await stop_all(crowd.subs)


problems = lost_or_duplicated
