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

from ..measure import (
    MIB,
    Context,
    Metric,
    connected,
    lost_or_duplicated,
    memory,
    publish_at_rate,
    warmed_up,
)
from ..targets import Target
from . import rows

DESCRIPTION = "S streams over K rooms, messages to random rooms: cost per message"
DEFAULTS: dict[str, Any] = {
    "subscribers": 1000,
    "transport": "sse",
    "rate": 100.0,
    "duration": 20.0,
}

METRICS = [
    rows.STREAMS,
    Metric("rooms", "rooms", ratio=False),
    rows.PUBLISHED,
    rows.PUBLISH_FAILURES,
    Metric("deliveries", "deliveries", ratio=False),
    rows.LOST,
    rows.DUPLICATES,
    Metric("server CPU per message (ms)", "server_cpu_ms_per_message", "{:.3f}"),
    Metric("Redis CPU per message (ms)", "redis_cpu_ms_per_message", "{:.3f}"),
    Metric("server CPU (% of a core)", "server_cpu_percent"),
    rows.LATENCY_P50,
    rows.LATENCY_P99,
    rows.RSS_SUBSCRIBED,
    rows.CONNECT_TIME,
    rows.LOADGEN_CPU,
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
    streams = [(kind, names[i % len(names)]) for i, kind in enumerate(kinds)]
    async with connected(target, ctx, streams) as crowd:
        rng = random.Random(opts.seed)
        await asyncio.sleep(opts.settle)
        rss_subscribed = memory(target)
        figures = await publish_at_rate(
            target,
            ctx,
            crowd,
            names[0],
            lambda seq: names[rng.randrange(len(names))],
            label=f"{target.name} K={len(names)}",
        )
        figures.update(
            rooms=len(names),
            rss_subscribed_mib=rss_subscribed / MIB,
            connect_s=crowd.connect_s,
            details=crowd.details(),
        )
        return figures


problems = lost_or_duplicated
