"""Steps the scenarios share: warm up, connect a crowd of streams, publish and tally."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp

from harness.redis_servers import RedisProcess

from .clients import Placement, Recorder, Subscriber, open_all, source_addresses, stop_all
from .procfs import cpu_seconds, own_cpu_seconds, rss_bytes
from .progress import LoopLag, Progress, showing
from .publisher import Publisher, Window
from .tables import is_chat
from .targets import BenchError, Target, stream_kinds
from .typists import Typists

MIB = 2**20


@dataclasses.dataclass
class Context:
    opts: argparse.Namespace
    redis: RedisProcess
    progress: Progress


@dataclasses.dataclass(frozen=True)
class Metric:
    label: str
    key: str
    fmt: str = "{:.0f}"
    ratio: bool = True  # show ours/other for it (not for counts that are the same by design)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def sources(opts: argparse.Namespace, n: int) -> list[str | None]:
    if opts.source_addresses:
        return [f"127.0.0.{i + 2}" for i in range(opts.source_addresses)]
    return source_addresses(n)


def make_subscribers(
    target: Target,
    opts: argparse.Namespace,
    kinds_rooms: Sequence[tuple[str, str]],
    recorder: Recorder,
    placement: Placement | None,
    *,
    keep_cookie: bool = False,
) -> list[Subscriber]:
    """A subscriber for each (kind, room); ``keep_cookie``: each reconnects
    with the session cookie it was given, as a browser does."""
    addresses = sources(opts, len(kinds_rooms))
    endpoint = target.endpoint()
    return [
        Subscriber(
            kind,
            endpoint,
            room,
            recorder,
            placement,
            source=addresses[i % len(addresses)],
            deflate=opts.deflate,
            token=endpoint.token(i),
            keep_cookie=keep_cookie,
        )
        for i, (kind, room) in enumerate(kinds_rooms)
    ]


def one_case(opts: argparse.Namespace, label: str) -> list[dict[str, Any]]:
    """The cases of a scenario that measures one configuration (``--transport``'s)."""
    return [{"label": label, "transport": opts.transport}]


async def warmed_up(target: Target, ctx: Context, case: dict[str, Any], room: str) -> list[str]:
    """The kinds of the case's streams, once the target is warmed up in ``room``
    (see :func:`warm_up`)."""
    kinds = stream_kinds(target, case["transport"], ctx.opts.subscribers)
    assert kinds is not None
    await warm_up(target, ctx, room, kinds)
    return kinds


async def warm_up(target: Target, ctx: Context, room: str, kinds: Sequence[str]) -> None:
    """One stream of each kind on every process and a few messages, then closed: so that
    lazily created state (the room, Redis connections, imports) exists before the
    baseline is read."""
    workers = ctx.opts.workers
    kinds_rooms = [(kind, room) for kind in sorted(set(kinds)) for _ in range(workers)]
    placement = Placement(workers, [k for k, _ in kinds_rooms], enabled=True)
    subs = make_subscribers(target, ctx.opts, kinds_rooms, Recorder(), placement)
    try:
        live = await open_all(subs, len(subs), 30)
        if len(live) < len(subs):
            errors = {s.error for s in subs if s.error}
            raise BenchError(f"{target.name}: warm-up streams could not connect: {errors}")
        async with aiohttp.ClientSession(target.base_url) as poster:
            for i in range(3):
                async with poster.post(
                    f"/api/rooms/{room}/messages", json={"text": f"warmup {i}"}
                ) as resp:
                    if resp.status != 201:
                        raise BenchError(f"{target.name}: warm-up POST answered {resp.status}")
        await asyncio.sleep(0.5)
    finally:
        await stop_all(subs)


@dataclasses.dataclass
class Crowd:
    """The connected streams of one target."""

    subs: list[Subscriber]
    live: list[Subscriber]
    recorder: Recorder
    placement: Placement
    connect_s: float
    connect_server_cpu_s: float

    @property
    def connects(self) -> int:
        """Streams the server opened while connecting: the ones kept, and the ones
        closed again to balance the processes (each cost the server a connect)."""
        return sum(self.placement.landings.values())

    def by_room(self) -> dict[str, list[Subscriber]]:
        rooms: dict[str, list[Subscriber]] = {}
        for sub in self.live:
            rooms.setdefault(sub.room, []).append(sub)
        return rooms

    def details(self) -> dict[str, Any]:
        return {
            "streams_by_kind": dict(Counter(s.kind for s in self.live)),
            "streams_per_process": self.placement.per_process(),
            "landings_per_process": dict(sorted(self.placement.landings.items())),
            "reopened_to_balance": self.placement.retries,
            "failed_streams": len(self.subs) - len(self.live),
            "connect_errors": dict(Counter(s.error for s in self.subs if s.error)),
        }


@contextlib.asynccontextmanager
async def connected(
    target: Target,
    ctx: Context,
    kinds_rooms: Sequence[tuple[str, str]],
    *,
    balance: bool = True,
    keep_cookie: bool = False,
) -> AsyncIterator[Crowd]:
    """Open the streams (at most ``--connect-concurrency`` at a time) and keep them open
    until the block ends; fails when more than a tenth of them could not connect.
    ``keep_cookie``: a stream that reconnects sends the session cookie it was given."""
    opts = ctx.opts
    recorder = Recorder()
    placement = Placement(opts.workers, [k for k, _ in kinds_rooms], balance and opts.balance)
    subs = make_subscribers(target, opts, kinds_rooms, recorder, placement, keep_cookie=keep_cookie)
    started = time.monotonic()
    cpu0 = cpu_seconds(target.pids())

    def state() -> tuple[str, float, str]:
        ready = sum(1 for s in subs if s.ready.is_set())
        return (
            f"{target.name} connect",
            ready / len(subs),
            f"{ready}/{len(subs)} streams, {placement.retries} moved",
        )

    async with showing(ctx.progress, state):
        live = await open_all(subs, opts.connect_concurrency, opts.connect_timeout)
    crowd = Crowd(
        subs,
        live,
        recorder,
        placement,
        time.monotonic() - started,
        cpu_seconds(target.pids()) - cpu0,
    )
    if not live or len(subs) - len(live) > len(subs) // 10:
        await stop_all(subs)
        errors = dict(Counter(s.error for s in subs if s.error))
        raise BenchError(
            f"{target.name}: only {len(live)} of {len(subs)} streams connected in "
            f"{crowd.connect_s:.0f} s: {errors}"
        )
    try:
        yield crowd
    finally:
        await stop_all(subs)


@contextlib.asynccontextmanager
async def publishing(
    target: Target, ctx: Context, room: str, wait: float = 0.5, senders: int | None = None
) -> AsyncIterator[Publisher]:
    """A publisher with ``senders`` (``--senders``) senders, posting as the
    target's senders do (a visitor's cookie, a token, a server API key...),
    open until the block ends; each sender posts a warm-up message to
    ``room``, and the block starts ``wait`` s later."""
    publisher = Publisher(
        target.base_url, target.senders(senders or ctx.opts.senders), target.edit_every
    )
    try:
        await publisher.open(room)
        await asyncio.sleep(wait)  # the warm-up messages are delivered and ignored
        yield publisher
    finally:
        await publisher.close()


async def publish_at_rate(
    target: Target,
    ctx: Context,
    crowd: Crowd,
    first_room: str,
    room_of: Callable[[int], str],
    *,
    label: str,
) -> dict[str, Any]:
    """:func:`publish_and_drain` at ``--rate`` for ``--duration`` s, from senders
    warmed up in ``first_room``."""
    opts = ctx.opts
    async with publishing(target, ctx, first_room) as publisher:
        return await publish_and_drain(
            target,
            ctx,
            crowd,
            publisher,
            opts.rate,
            opts.duration,
            room_of,
            label=label,
            drain_timeout=opts.drain_timeout,
        )


async def publish_and_drain(
    target: Target,
    ctx: Context,
    crowd: Crowd,
    publisher: Publisher,
    rate: float | None,
    duration: float,
    room_of: Callable[[int], str],
    *,
    label: str,
    drain_timeout: float,
) -> dict[str, Any]:
    """Publish on schedule (``rate`` None: as fast as the senders can), wait until
    every stream has every message (or nothing more arrived for ``drain_timeout`` s)
    and the target has done what else it owes them (its webhooks, say), and measure
    the window: deliveries, latency, loss, CPU of the server, Redis and the load
    generator.

    For a target whose senders also edit (``edit_every``), a delivery is a new
    message's or an edit's: each is expected once on every stream of its room.
    For one whose streams' users type (``typing_every_s``), they type while the
    publishing lasts (:class:`~benchmarks.typists.Typists`); the notices they
    get are counted apart, not as deliveries."""
    recorder = crowd.recorder
    recorder.reset()
    lag = LoopLag()
    lag.start()
    pids = target.pids()
    server_cpu0 = cpu_seconds(pids)
    redis_cpu0 = cpu_seconds([ctx.redis.pid])
    own_cpu0 = own_cpu_seconds()
    target.before_publishing()
    typists = (
        Typists(target.base_url, crowd.live, target.typing_every_s, cookies=target.sessions)
        if target.typing_every_s
        else None
    )
    wall0 = time.perf_counter()

    def publishing() -> tuple[str, float, str]:
        window = publisher.window
        elapsed = (time.perf_counter_ns() - window.start_ns) / 1e9 if window else 0.0
        sent = f"{window.started}/{window.total or '-'} sent" if window else ""
        return (f"{label} publish", elapsed / duration, f"{recorder.deliveries} deliveries, {sent}")

    async with showing(ctx.progress, publishing):
        if typists is None:
            window = await publisher.run(rate, duration, room_of)
        else:
            window, _ = await asyncio.gather(
                publisher.run(rate, duration, room_of), typists.run(duration)
            )
    rooms = crowd.by_room()
    expected = sum(len(rooms.get(window.rooms[seq], ())) for seq in window.accepted)
    last_progress, last_count = time.monotonic(), -1

    def draining() -> tuple[str, float, str]:
        done = recorder.first_copies / expected if expected else 1.0
        return (f"{label} drain", done, f"{recorder.first_copies}/{expected} deliveries")

    async with showing(ctx.progress, draining):
        while recorder.first_copies < expected:
            if recorder.first_copies != last_count:
                last_count, last_progress = recorder.first_copies, time.monotonic()
            elif time.monotonic() - last_progress > drain_timeout:
                break
            await asyncio.sleep(0.05)
    owed = await target.after_publishing(window.accepted, drain_timeout)
    wall = time.perf_counter() - wall0
    server_cpu = cpu_seconds(pids) - server_cpu0
    redis_cpu = cpu_seconds([ctx.redis.pid]) - redis_cpu0
    own_cpu = own_cpu_seconds() - own_cpu0
    await lag.stop()
    features: dict[str, Any] = {}
    if target.edit_every:
        features.update(edits=len(window.edits), update_deliveries=recorder.updates)
    if typists is not None:
        features.update(typists.figures(recorder.error_frames), typing_received=recorder.typing)
    return (
        tally(window, crowd, expected)
        | owed
        | features
        | {
            "server_cpu_s": server_cpu,
            "server_cpu_percent": server_cpu / wall * 100,
            "server_cpu_ms_per_1k_deliveries": server_cpu * 1e6 / recorder.deliveries
            if recorder.deliveries
            else None,
            "server_cpu_ms_per_message": server_cpu * 1e3 / len(window.accepted)
            if window.accepted
            else None,
            "redis_cpu_s": redis_cpu,
            "redis_cpu_ms_per_message": redis_cpu * 1e3 / len(window.accepted)
            if window.accepted
            else None,
            "loadgen_cpu_percent": own_cpu / wall * 100,
            "loadgen_loop_lag_p99_ms": percentile(sorted(lag.samples), 99),
        }
    )


def tally(window: Window, crowd: Crowd, expected: int) -> dict[str, Any]:
    """Deliveries, latency and loss of one window (per stream, by sequence number,
    against every message answered 201)."""
    recorder = crowd.recorder
    rooms = crowd.by_room()
    lost = 0
    lost_messages = 0
    for seq in window.accepted:
        missing = sum(1 for sub in rooms.get(window.rooms[seq], ()) if not sub.received(seq))
        lost += missing
        lost_messages += bool(missing)
    latencies = sorted(recorder.latencies)
    rtts = sorted(window.round_trips)
    end_ns = max(recorder.last_ns, window.end_ns)
    span = (end_ns - window.start_ns) / 1e9
    reasons: Counter[str] = Counter()
    for sub in crowd.live:
        reasons.update(sub.close_reasons)
    return {
        "streams": len(crowd.live),
        "published": len(window.accepted),
        "published_per_s": len(window.accepted) * 1e9 / (window.end_ns - window.start_ns)
        if window.end_ns > window.start_ns
        else 0.0,
        "publish_failures": sum(window.failures.values()),
        "publish_failure_kinds": dict(window.failures),
        "expected_deliveries": expected,
        "deliveries": recorder.deliveries,
        "window_s": span,
        "deliveries_per_s": recorder.deliveries / span if span > 0 else 0.0,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": latencies[-1] if latencies else 0.0,
        "lost": lost,
        "lost_messages": lost_messages,
        "duplicates": recorder.duplicates,
        "out_of_order": recorder.out_of_order,
        "reconnects": recorder.reconnects,
        "reconnect_reasons": dict(reasons.most_common(5)),
        "other_events": recorder.other_events,
        "other_mib": recorder.other_bytes / MIB,
        "publish_rtt_p50_ms": percentile(rtts, 50),
        "publish_rtt_p99_ms": percentile(rtts, 99),
        "schedule_lag_max_ms": max(window.lags, default=0.0),
    }


def memory(target: Target) -> int:
    return rss_bytes(target.pids())


def lost_or_duplicated(target: str, figures: dict[str, Any]) -> list[str]:
    """What fails a run (exit code 1): the chat server (or a variant of it) lost or
    duplicated messages, or the receiver of its webhooks missed a message's event."""
    if not is_chat(target):
        return []
    keys = ("lost", "duplicates", "webhook_missing")
    return [f"{key}: {figures[key]}" for key in keys if figures.get(key)]
