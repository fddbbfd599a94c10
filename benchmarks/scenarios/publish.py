"""publish: C senders POST as fast as they can, a few streams listening; what a message costs.

Each of the C senders (``--connections 50,400``: one case each) has a
keep-alive connection of its own (aiohttp) and POSTs its next message as
soon as its last was answered, for ``--duration`` s, each as the target's
senders post (a visitor with a session cookie; for ``chat-signed`` a token;
for ``chat-api`` the server API with its key). A few streams (``--subscribers``,
10 by default) in the room check that every accepted message is delivered
once. Reported: messages accepted per second, the POST round trip, the
server's CPU per message (a message's cost, the few deliveries included),
Redis', and the load generator's own CPU: it shares the cores with the
server, and at hundreds of connections it may be what limits the rate.

Acceptance figure: ``--connections 50,400 --duration 10 --rounds 3
--targets chat,chat-api,bare,socketio`` (a 10-s rate moves by 10 % and
more between two runs of the same server on this machine).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..measure import (
    Context,
    Metric,
    connected,
    lost_or_duplicated,
    publish_and_drain,
    publishing,
    warmed_up,
)
from ..targets import Target
from . import rows

DESCRIPTION = "C senders POSTing as fast as they can to one room that a few streams listen to"
DEFAULTS: dict[str, Any] = {"subscribers": 10, "transport": "ws", "duration": 10.0}

METRICS = [
    rows.STREAMS,
    Metric("sending connections", "connections", ratio=False),
    rows.PUBLISHED,
    Metric("messages accepted per second", "published_per_s"),
    rows.PUBLISH_FAILURES,
    Metric("POST round trip p50 (ms)", "publish_rtt_p50_ms", "{:.1f}"),
    Metric("POST round trip p99 (ms)", "publish_rtt_p99_ms", "{:.1f}"),
    Metric("server CPU per message (ms)", "server_cpu_ms_per_message", "{:.3f}"),
    Metric("Redis CPU per message (ms)", "redis_cpu_ms_per_message", "{:.3f}"),
    Metric("server CPU (% of a core)", "server_cpu_percent"),
    Metric("deliveries", "deliveries", ratio=False),
    rows.LATENCY_P99,
    rows.LOST,
    rows.DUPLICATES,
    rows.WEBHOOK_MISSING,
    rows.WEBHOOK_LATENCY_P99,
    rows.WEBHOOK_RECEIVER_CPU,
    rows.LOADGEN_CPU,
    Metric("load generator loop lag p99 (ms)", "loadgen_loop_lag_p99_ms", "{:.1f}", ratio=False),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    return [
        {
            "label": f"{n} connections POSTing as fast as they can for {opts.duration:g} s, "
            f"{opts.subscribers} {opts.transport} streams listening",
            "short": f"{n} connections",
            "connections": n,
            "transport": opts.transport,
        }
        for n in opts.connections
    ]


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    room = opts.room
    kinds = await warmed_up(target, ctx, case, room)
    n = case["connections"]
    async with (
        connected(target, ctx, [(kind, room) for kind in kinds]) as crowd,
        publishing(target, ctx, room, senders=n) as publisher,
    ):
        await asyncio.sleep(opts.settle)
        figures = await publish_and_drain(
            target,
            ctx,
            crowd,
            publisher,
            None,
            opts.duration,
            lambda seq: room,
            label=f"{target.name} x{n}",
            drain_timeout=opts.drain_timeout,
        )
        return figures | {"connections": n, "details": crowd.details()}


problems = lost_or_duplicated
