"""storm: N clients (half SSE, half WebSocket) connecting at once.

Every client tries once (no retry), all at the same moment (or at most
``--storm-concurrency`` at a time), and waits up to ``--storm-timeout`` s for
its stream to open. Reported: how many opened, how many got a 503 or another
answer or error, the time until the last one opened, connect times, and the
server's CPU per opened stream (from the first connect until ``--settle`` s
after the last one settled). socket.io has no SSE:
all its clients use WebSocket.

Acceptance figure: ``--subscribers 2000 --transport mixed``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from ..clients import Recorder, open_all, stop_all
from ..measure import Context, Metric, make_subscribers, one_case, percentile, warmed_up
from ..procfs import cpu_seconds
from ..progress import showing
from ..targets import Target
from . import rows

DESCRIPTION = "N clients connecting at once"
DEFAULTS: dict[str, Any] = {"subscribers": 2000, "transport": "mixed"}

METRICS = [
    Metric("clients", "clients", ratio=False),
    Metric("opened", "opened"),
    Metric("answered 503", "http_503"),
    Metric("other errors", "other_errors"),
    Metric("time until all opened (s)", "all_opened_s", "{:.2f}"),
    Metric("time until the last opened (s)", "last_opened_s", "{:.2f}"),
    Metric("connect time p50 (ms)", "connect_p50_ms", "{:.0f}"),
    Metric("connect time p99 (ms)", "connect_p99_ms", "{:.0f}"),
    rows.SERVER_CPU,
    Metric("server CPU per opened stream (ms)", "server_cpu_ms_per_connect", "{:.2f}"),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    at_once = opts.storm_concurrency or opts.subscribers
    return one_case(
        opts,
        f"{opts.subscribers} {opts.transport} clients, {at_once} at once, one try "
        f"each, {opts.storm_timeout:g} s to open",
    )


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    kinds = await warmed_up(target, ctx, case, opts.room)
    await asyncio.sleep(opts.settle)
    subs = make_subscribers(target, opts, [(k, opts.room) for k in kinds], Recorder(), None)
    pids = target.pids()
    cpu0 = cpu_seconds(pids)
    started = time.monotonic()
    try:

        def state() -> tuple[str, float, str]:
            settled = sum(1 for s in subs if s.settled.is_set())
            opened = sum(1 for s in subs if s.ready.is_set())
            return (
                f"{target.name} storm",
                settled / len(subs),
                f"{opened} open, {settled - opened} failed",
            )

        async with showing(ctx.progress, state):
            live = await open_all(
                subs,
                opts.storm_concurrency or len(subs),
                opts.storm_timeout + 5,
                attempts=1,
                open_timeout=opts.storm_timeout,
            )
        await asyncio.sleep(opts.settle)  # work the storm left behind (presence, say)
        server_cpu = cpu_seconds(pids) - cpu0
        errors = Counter(s.error or "no answer in time" for s in subs if not s.ready.is_set())
        times = sorted(s.connect_s * 1e3 for s in live)
        signed_in = await target.sign_in_details(opts.room)  # once everything is measured
        last = max((s.opened_at for s in live), default=started) - started
        return {
            "clients": len(subs),
            "opened": len(live),
            "http_503": errors.get("HTTP 503", 0),
            "other_errors": sum(n for e, n in errors.items() if e != "HTTP 503"),
            "all_opened_s": last if len(live) == len(subs) else None,
            "last_opened_s": last,
            "connect_p50_ms": percentile(times, 50),
            "connect_p99_ms": percentile(times, 99),
            "server_cpu_s": server_cpu,
            "server_cpu_ms_per_connect": server_cpu * 1e3 / len(live) if live else None,
            "details": {
                "clients_by_kind": dict(Counter(kinds)),
                "opened_by_kind": dict(Counter(s.kind for s in live)),
                "errors": dict(errors),
                "opened_per_process": dict(sorted(Counter(s.process for s in live).items())),
            }
            | signed_in,
        }
    finally:
        await stop_all(subs)


def problems(target: str, figures: dict[str, Any]) -> list[str]:
    return []
