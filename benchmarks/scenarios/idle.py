"""idle: N idle streams; the server's memory per connection.

The streams are opened from ``benchmarks/swarm.py`` processes (at most
``--swarm-size`` each, so that no process needs more open files than its
limit allows), from several local addresses (127.0.0.2, .3, ...) when there
are more than 10,000, WebSocket ones offering permessage-deflate as browsers
do. Memory per connection is the summed RSS of all the server's processes
once every stream is open and ``--settle`` seconds passed, minus the same
before (after a warm-up), divided by the streams open.

Beside it, memory per connection as an operator provisions it (``--fresh
LOW,HIGH``, 1000,3000 by default; ``--fresh 0`` leaves it out): a freshly
started server holds LOW idle streams, then another freshly started one
HIGH, each without a warm-up; the summed RSS of the server's processes
``--settle`` seconds after the last opened, the difference over the
difference in streams. Transient growth that a warm-up would absorb (the
allocator's arenas after a storm of opens, lazily built state) counts here,
as it does in a server's provisioning. The fresh servers come first; the
warm-up method then has a freshly started server of its own.

Acceptance figures: ``--subscribers 2000 --transport ws``, ``--transport sse``,
and ``--subscribers 20000 --transport mixed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..measure import MIB, Context, Metric, memory, one_case, sources, warm_up
from ..procfs import cpu_seconds, fd_limit, rss_bytes
from ..progress import showing
from ..tables import is_chat
from ..targets import ROOT, BenchError, Target, stream_kinds
from . import rows

DESCRIPTION = "N idle streams: server memory per connection"
DEFAULTS: dict[str, Any] = {"subscribers": 2000, "transport": "ws"}
FRESH = "fresh_memory_per_connection_kib"
# The longest line a swarm process may report on.
REPORT_LIMIT = 64 * 1024 * 1024

METRICS = [
    Metric("streams open", "streams", ratio=False),
    Metric("streams that failed", "failed"),
    rows.MEMORY_PER_CONNECTION,
    Metric("memory per connection, fresh servers (KiB)", FRESH, "{:.1f}"),
    Metric("fresh server RSS, fewer streams (MiB)", "fresh_rss_low_mib", "{:.1f}"),
    Metric("fresh server RSS, more streams (MiB)", "fresh_rss_high_mib", "{:.1f}"),
    Metric("server RSS before (MiB)", "rss_before_mib", "{:.1f}"),
    Metric("server RSS, all open (MiB)", "rss_open_mib", "{:.1f}"),
    Metric("time to open all (s)", "connect_s", "{:.1f}"),
    Metric("server CPU while opening (s)", "connect_server_cpu_s", "{:.2f}"),
    Metric("events sent to idle streams", "other_events"),
    Metric("bytes of those events (MiB)", "other_mib", "{:.2f}"),
    Metric("longest heartbeat tick, opening included (ms)", "heartbeat_max_ms", "{:.1f}"),
    Metric("longest loop stall, opening included (ms)", "loop_stall_max_ms", "{:.1f}"),
    Metric("heartbeat ticks over 100 ms while held", "heartbeat_slow_held"),
    Metric("loop stalls over 100 ms while held", "loop_stalls_held"),
]

# The chat server's per-worker figures read from /metrics: the longest (ms)
# or the sum over workers.
MAXIMA = {
    "chat_heartbeat_max_seconds": "heartbeat_max_ms",
    "chat_loop_stall_max_seconds": "loop_stall_max_ms",
}
SUMS = {
    "chat_heartbeat_slow_total": "heartbeat_slow",
    "chat_loop_stalls_total": "loop_stalls",
}


async def worker_figures(base_url: str) -> dict[str, float]:
    """The chat server's longest heartbeat tick and loop stall over its workers
    (ms), and how many of each went over 100 ms."""
    async with aiohttp.ClientSession() as session, session.get(base_url + "/metrics") as resp:
        text = await resp.text()
    found: dict[str, float] = dict.fromkeys(SUMS.values(), 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in MAXIMA:
            value = float(rest.rsplit(" ", 1)[1]) * 1000
            found[MAXIMA[name]] = max(found.get(MAXIMA[name], 0.0), value)
        elif name in SUMS:
            found[SUMS[name]] += float(rest.rsplit(" ", 1)[1])
    return found


def cases(opts: Any) -> list[dict[str, Any]]:
    deflate = ", WebSocket offering permessage-deflate" if opts.deflate else ""
    return one_case(opts, f"{opts.subscribers} idle {opts.transport} streams, one room{deflate}")


class Swarm:
    """The processes holding the streams."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.opened: list[int] = []
        self.settled: list[int] = []
        self.reports: list[dict[str, Any]] = []

    async def start(self, target: Target, ctx: Context, kinds: list[str]) -> None:
        opts = ctx.opts
        per_process = max(1, min(opts.swarm_size, fd_limit() - 256))
        addresses = sources(opts, len(kinds))
        endpoint = target.endpoint()
        streams = [
            (kind, addresses[i % len(addresses)], endpoint.token(i)) for i, kind in enumerate(kinds)
        ]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        )
        for start in range(0, len(streams), per_process):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.swarm",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                env=env,
                # (A report holds every stream's latency: 10,000 streams'
                # are some 100 KB on one line.)
                limit=REPORT_LIMIT,
            )
            spec = {
                "endpoint": [endpoint.host, endpoint.port, endpoint.pid_header, endpoint.resumes],
                "room": opts.room,
                "streams": streams[start : start + per_process],
                "deflate": opts.deflate,
                "concurrency": opts.connect_concurrency,
                "timeout": opts.connect_timeout,
            }
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            await proc.stdin.drain()
            self.procs.append(proc)
            self.opened.append(0)
            self.settled.append(0)

    async def open(self, target: Target, ctx: Context, kinds: list[str]) -> None:
        """Start the processes and wait until each has opened its streams."""
        await self.start(target, ctx, kinds)

        def state() -> tuple[str, float, str]:
            opened, settled = sum(self.opened), sum(self.settled)
            return (
                f"{target.name} open",
                settled / len(kinds),
                f"{opened}/{len(kinds)} open, {settled - opened} failed",
            )

        async with showing(ctx.progress, state):
            await self.wait()

    @property
    def opened_total(self) -> int:
        return sum(r["opened"] for r in self.reports)

    async def wait(self) -> None:
        async def follow(i: int, proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                word, _, rest = line.decode().strip().partition(" ")
                if word == "progress":
                    opened, settled = rest.split()
                    self.opened[i], self.settled[i] = int(opened), int(settled)
                elif word == "done":
                    self.reports.append(json.loads(rest))
                    return
            raise BenchError(f"a swarm process exited with {await proc.wait()}")

        await asyncio.gather(*(follow(i, p) for i, p in enumerate(self.procs)))

    async def report(self, messages: int, quiet_s: float) -> list[dict[str, Any]]:
        """What each process's streams made of the benchmark's messages, once
        each stream has had ``messages`` of them (or none came for ``quiet_s`` s)."""

        async def ask(proc: asyncio.subprocess.Process) -> dict[str, Any]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"report {messages} {quiet_s}\n".encode())
            await proc.stdin.drain()
            while line := await proc.stdout.readline():
                word, _, rest = line.decode().strip().partition(" ")
                if word == "report":
                    return dict(json.loads(rest))
            raise BenchError(f"a swarm process exited with {await proc.wait()}")

        return list(await asyncio.gather(*(ask(p) for p in self.procs)))

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(60):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


@dataclasses.dataclass
class Held:
    """Streams a :class:`Swarm` opened, and what opening them took."""

    swarm: Swarm
    rss_before: int  # the server's summed RSS, warmed up, before
    connect_s: float  # until every stream opened or failed
    connect_cpu_s: float  # the server's CPU meanwhile
    pids: list[int]  # the server's processes, once they settled
    rss_open: int  # their summed RSS then


@contextlib.asynccontextmanager
async def held(target: Target, ctx: Context, kinds: list[str]) -> AsyncIterator[Held]:
    """After a warm-up, open a stream of each of ``kinds`` from a :class:`Swarm`
    and hold them until the block ends (the memory read ``--settle`` s after)."""
    opts = ctx.opts
    await warm_up(target, ctx, opts.room, kinds)
    await asyncio.sleep(opts.settle)
    rss_before = memory(target)
    cpu0 = cpu_seconds(target.pids())
    started = time.monotonic()
    swarm = Swarm()
    try:
        await swarm.open(target, ctx, kinds)
        connect_s = time.monotonic() - started
        connect_cpu = cpu_seconds(target.pids()) - cpu0
        await asyncio.sleep(opts.settle)
        pids = target.pids()
        yield Held(swarm, rss_before, connect_s, connect_cpu, pids, rss_bytes(pids))
    finally:
        await swarm.close()


def restart(target: Target, ctx: Context) -> None:
    """Stop the target and start it again, on an empty Redis."""
    target.stop()
    ctx.redis.flush()
    target.start()


async def fresh_servers(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    """Memory per connection as an operator provisions it (see the module's
    docstring); ``target`` has just started, and is started afresh once more
    at the end."""
    opts = ctx.opts
    held: list[tuple[int, int]] = []  # (streams open, summed RSS)
    for i, count in enumerate(opts.fresh):
        if i:
            restart(target, ctx)
        kinds = stream_kinds(target, case["transport"], count)
        assert kinds is not None
        swarm = Swarm()
        try:
            await swarm.open(target, ctx, kinds)
            await asyncio.sleep(opts.settle)
            held.append((swarm.opened_total, rss_bytes(target.pids())))
        finally:
            await swarm.close()
    restart(target, ctx)
    (low, rss_low), (high, rss_high) = held
    if high <= low:
        raise BenchError(f"{target.name}: fresh servers held {low} and {high} streams")
    return {
        FRESH: (rss_high - rss_low) / (high - low) / 1024,
        "fresh_rss_low_mib": rss_low / MIB,
        "fresh_rss_high_mib": rss_high / MIB,
        "fresh_streams": [low, high],
    }


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    fresh = await fresh_servers(target, ctx, case) if opts.fresh else {}
    kinds = stream_kinds(target, case["transport"], opts.subscribers)
    assert kinds is not None
    if len(kinds) // opts.workers + 1000 > fd_limit():
        ctx.progress.note(
            f"warning: {len(kinds)} streams on {opts.workers} processes may need more open "
            f"files per server process than the limit ({fd_limit()}; see ulimit -Hn)"
        )
    async with held(target, ctx, kinds) as h:
        swarm, pids, rss_before, rss_open = h.swarm, h.pids, h.rss_before, h.rss_open
        connect_s, connect_cpu = h.connect_s, h.connect_cpu_s
        opened = swarm.opened_total
        errors: Counter[str] = Counter()
        per_process: Counter[str] = Counter()
        for report in swarm.reports:
            errors.update(report["errors"])
            per_process.update(report["per_process"])
        if not opened:
            raise BenchError(f"{target.name}: no idle stream opened: {dict(errors)}")
        maxima: dict[str, float] = {}
        if is_chat(target.name) and opts.hold > 0:
            # Held idle: every heartbeat tick (one a second, a share of the
            # streams each) and loop stall over 100 ms is counted.
            before = await worker_figures(target.base_url)
            await asyncio.sleep(opts.hold)
            maxima = await worker_figures(target.base_url)
            for name in SUMS.values():
                maxima[f"{name}_held"] = maxima.pop(name) - before[name]
        return {
            **maxima,
            **fresh,
            "streams": opened,
            "failed": sum(r["failed"] for r in swarm.reports),
            "memory_per_connection_kib": (rss_open - rss_before) / opened / 1024,
            "rss_before_mib": rss_before / MIB,
            "rss_open_mib": rss_open / MIB,
            "connect_s": connect_s,
            "connect_server_cpu_s": connect_cpu,
            "other_events": sum(r["other_events"] for r in swarm.reports),
            "other_mib": sum(r["other_bytes"] for r in swarm.reports) / MIB,
            "details": {
                "streams_by_kind": dict(Counter(kinds)),
                "streams_per_process": dict(sorted(per_process.items())),
                "rss_per_process_mib": {str(p): round(rss_bytes([p]) / MIB, 1) for p in pids},
                "connect_errors": dict(errors),
                "closed_by_server_meanwhile": sum(r["closed_meanwhile"] for r in swarm.reports),
                "swarm_processes": len(swarm.procs),
                "source_addresses": len(sources(opts, len(kinds))),
            }
            | await target.sign_in_details(opts.room),
        }


def problems(target: str, figures: dict[str, Any]) -> list[str]:
    return []
