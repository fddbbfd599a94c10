"""reload: N connected clients (half SSE, half WebSocket) through a reload.

The chat server: N streams open (``--connect-concurrency`` at a time) over
``--reload-rooms`` rooms (one per 2,000 streams unless told), a message is
published every 100 ms (``--rate``) to the rooms in turn, and after a second
of it the main process gets SIGHUP: a rolling reload. Every client comes back
50 ms after its stream ended (the benchmark's client: it does not wait for
the SSE ``retry:``), resuming after the last id it saw, with the session
cookie it was given (the same visitor again, as a browser comes back). Measured from the
SIGHUP: the time until every client is on a new worker, and until each has
also received a message there (a room's next message comes up to
``rooms x 100 ms`` later); the messages published meanwhile (until a second
after that), lost and duplicated on every stream of their room; the p99
latency of deliveries to clients not being moved (a message sent while the
stream that got it was open, not one a reconnect caught up on) and of all
deliveries; 503s and connections refused or reset (streams' reconnects and
posts); the workers' heartbeat ticks and loop stalls over 100 ms meanwhile
(old and new workers', from ``/metrics``); the server's CPU.

The bare broadcaster has no reload: its "reload" is opening the N clients
from scratch, all at once (``--storm-timeout`` s each to open), while the
same messages are published, timed the same way from the first connect: what
the chat server's reload is compared with. It keeps no history (a client
cannot get what was sent before it connected): its lost deliveries are n/a.

Acceptance figure: ``--clients 20000 --transport mixed --targets chat,bare``.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..clients import Placement, Recorder, Subscriber, open_all, stop_all
from ..measure import (
    Context,
    Crowd,
    Metric,
    connected,
    lost_or_duplicated,
    make_subscribers,
    one_case,
    percentile,
    publishing,
    tally,
    warmed_up,
)
from ..procfs import cpu_seconds, own_cpu_seconds, process_tree, tree_cpu_seconds
from ..progress import LoopLag, showing
from ..publisher import Publisher, Window
from ..tables import is_chat
from ..targets import BenchError, Target
from . import rows
from .idle import SUMS, worker_figures

DESCRIPTION = "N connected clients through a reload (bare: opening N from scratch)"
DEFAULTS: dict[str, Any] = {"subscribers": 20000, "transport": "mixed", "rate": 10.0}
STREAMS_PER_ROOM = 2000
WINDOW_S = 1.0  # publishing goes on in windows this long until everyone is back

METRICS = [
    Metric("clients", "clients", ratio=False),
    Metric("time until every client is back (s)", "all_back_s", "{:.2f}"),
    Metric("time until every client received a message again (s)", "all_received_s", "{:.2f}"),
    Metric("clients back", "back"),
    rows.PUBLISHED,
    rows.LOST,
    rows.DUPLICATES,
    Metric("latency p99, clients not being moved (ms)", "steady_latency_p99_ms", "{:.1f}"),
    rows.LATENCY_P99,
    Metric("answered 503", "http_503"),
    Metric("connections refused or reset", "refused"),
    Metric("heartbeat ticks over 100 ms", "heartbeat_slow", ratio=False),
    Metric("loop stalls over 100 ms", "loop_stalls", ratio=False),
    rows.SERVER_CPU,
    rows.LOADGEN_CPU,
    Metric("load generator loop lag p99 (ms)", "loadgen_loop_lag_p99_ms", "{:.0f}", ratio=False),
]


def cases(opts: Any) -> list[dict[str, Any]]:
    rooms = room_count(opts)
    return one_case(
        opts,
        f"{opts.subscribers} {opts.transport} clients in {rooms} room{'s' if rooms > 1 else ''}, "
        f"a message every {1000 / opts.rate:g} ms; chat: SIGHUP, bare: open all from scratch",
    )


def room_count(opts: Any) -> int:
    return opts.reload_rooms or max(1, math.ceil(opts.subscribers / STREAMS_PER_ROOM))


class Moves:
    """Each client's way back, as it happens: when it was first on a process
    not in ``old``, and when it first received a message there."""

    def __init__(self, subs: Sequence[Subscriber], old: set[str]) -> None:
        self.count = len(subs)
        self.old = old
        self.since_ns = 0  # the SIGHUP (chat) or the first connect (bare); 0: not yet
        self.back_ns: dict[int, int] = {}  # id(sub) -> when it was on a new process
        self.received_ns: dict[int, int] = {}  # id(sub) -> its first delivery there
        self.steady: list[float] = []  # latencies (ms) of deliveries to streams open when sent
        self.caught_up = 0  # deliveries a reconnect caught up on
        self.all_received = asyncio.Event()
        self.lag = LoopLag()  # the load generator's own, while it is measured
        self.own_cpu0 = 0.0
        self.wall0 = 0.0
        for sub in subs:
            sub.watch = self

    def start(self) -> None:
        self.since_ns = time.perf_counter_ns()
        self.own_cpu0, self.wall0 = own_cpu_seconds(), time.perf_counter()
        self.lag.start()

    async def stop(self) -> dict[str, float]:
        """The load generator's CPU and loop lag since :meth:`start`."""
        await self.lag.stop()
        wall = time.perf_counter() - self.wall0
        return {
            "loadgen_cpu_percent": (own_cpu_seconds() - self.own_cpu0) / wall * 100,
            "loadgen_loop_lag_p99_ms": percentile(sorted(self.lag.samples), 99),
        }

    def opened(self, sub: Subscriber) -> None:
        if self.since_ns and sub.serving not in self.old:
            self.back_ns.setdefault(id(sub), sub.open_ns)

    def delivered(self, sub: Subscriber, sent_ns: int, now: int) -> None:
        if not self.since_ns:
            return
        if sent_ns >= sub.open_ns:
            self.steady.append((now - sent_ns) / 1e6)
        else:
            self.caught_up += 1
        if sub.serving not in self.old and id(sub) not in self.received_ns:
            self.received_ns[id(sub)] = now
            if len(self.received_ns) == self.count:
                self.all_received.set()

    def seconds(self, times: dict[int, int]) -> float | None:
        """From the start until the last of ``times``, if every client has one."""
        if len(times) < self.count:
            return None
        return (max(times.values()) - self.since_ns) / 1e9


class Publishing:
    """Messages at ``--rate`` to the rooms in turn, in windows of
    :data:`WINDOW_S`, until told to stop; the windows added up."""

    def __init__(self, publisher: Publisher, rate: float, rooms: Sequence[str]) -> None:
        self.publisher = publisher
        self.rate = rate
        self.rooms = rooms
        self.windows: list[Window] = []
        self.stopping = False

    async def run(self) -> None:
        rooms = self.rooms
        start = time.perf_counter()
        while not self.stopping:
            self.windows.append(
                await self.publisher.run(self.rate, WINDOW_S, lambda seq: rooms[seq % len(rooms)])
            )
            # The next window when this one is due to end (not when its last POST was answered).
            start += WINDOW_S
            await asyncio.sleep(max(0.0, start - time.perf_counter()))

    def window(self) -> Window:
        first, last = self.windows[0], self.windows[-1]
        whole = Window(first.first_seq, sum(w.total for w in self.windows))
        whole.start_ns, whole.end_ns = first.start_ns, last.end_ns
        for w in self.windows:
            whole.rooms.update(w.rooms)
            whole.accepted += w.accepted
            whole.failures.update(w.failures)
            whole.round_trips.extend(w.round_trips)
            whole.lags.extend(w.lags)
            whole.started += w.started
        return whole


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    opts = ctx.opts
    rooms = [f"{opts.room}-{i}" for i in range(room_count(opts))]
    kinds = await warmed_up(target, ctx, case, rooms[0])
    kinds_rooms = [(kind, rooms[i % len(rooms)]) for i, kind in enumerate(kinds)]
    await asyncio.sleep(opts.settle)
    if is_chat(target.name):
        return await reloaded(target, ctx, kinds_rooms, rooms)
    return await from_scratch(target, ctx, kinds_rooms, rooms)


async def reloaded(
    target: Target, ctx: Context, kinds_rooms: list[tuple[str, str]], rooms: list[str]
) -> dict[str, Any]:
    """The chat server: the streams open, then SIGHUP."""
    opts = ctx.opts
    async with connected(target, ctx, kinds_rooms, balance=False, keep_cookie=True) as crowd:
        moves = Moves(crowd.live, {str(pid) for pid in target.pids()})
        cookies = {id(sub): sub.cookie for sub in crowd.live}
        before = await worker_figures(target.base_url)
        async with publishing(target, ctx, rooms[0]) as publisher:
            messages = Publishing(publisher, opts.rate, rooms)
            sending = asyncio.create_task(messages.run())
            await asyncio.sleep(1.0)
            main = target.main_pids[0]
            old = {int(sub.serving) for sub in crowd.live}  # the workers being replaced
            cpu0 = tree_cpu_seconds(main)
            moves.start()
            os.kill(main, signal.SIGHUP)
            await wait_back(ctx, target, moves)
            await asyncio.sleep(1.0)
            messages.stopping = True
            await sending
            loadgen = await moves.stop()
        figures = await settled(ctx, crowd, moves, messages.window()) | loadgen
        # A client given another session cookie on its way back came back as
        # another visitor (a new session, a new user in presence).
        figures["details"]["clients back as another visitor"] = sum(
            1 for sub in crowd.live if cookies[id(sub)] and sub.cookie != cookies[id(sub)]
        )
        figures["details"]["clients given no cookie"] = sum(1 for c in cookies.values() if not c)
        # (The old workers' CPU counts once they have exited and were waited for.)
        async with asyncio.timeout(opts.reload_timeout):
            # (Nothing tells this process when the server has waited for them: it looks.)
            while old & set(process_tree(main)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        figures["server_cpu_s"] = tree_cpu_seconds(main) - cpu0
        after = await worker_figures(target.base_url)
        for name in SUMS.values():
            figures[name] = after[name] - before[name]
        return figures


async def from_scratch(
    target: Target, ctx: Context, kinds_rooms: list[tuple[str, str]], rooms: list[str]
) -> dict[str, Any]:
    """The others: all the streams open at once while the messages go out."""
    opts = ctx.opts
    recorder = Recorder()
    subs = make_subscribers(target, opts, kinds_rooms, recorder, None, keep_cookie=True)
    moves = Moves(subs, set())
    async with publishing(target, ctx, rooms[0]) as publisher:
        messages = Publishing(publisher, opts.rate, rooms)
        sending = asyncio.create_task(messages.run())
        try:
            await asyncio.sleep(1.0)
            pids = target.pids()
            cpu0 = cpu_seconds(pids)
            moves.start()
            opening = asyncio.create_task(
                open_all(subs, len(subs), opts.storm_timeout + 5, open_timeout=opts.storm_timeout)
            )
            await wait_back(ctx, target, moves)
            live = await opening
            await asyncio.sleep(1.0)
            loadgen = await moves.stop()
        except BaseException:
            await stop_all(subs)
            raise
        finally:
            messages.stopping = True
            await sending
    placement = Placement(opts.workers, [kind for kind, _ in kinds_rooms], enabled=False)
    crowd = Crowd(subs, live, recorder, placement, 0.0, 0.0)
    try:
        figures = await settled(ctx, crowd, moves, messages.window()) | loadgen
    finally:
        await stop_all(subs)
    figures["server_cpu_s"] = cpu_seconds(pids) - cpu0
    # It keeps no history: a client that connects after a message cannot get it.
    figures.update(lost=None, lost_messages=None)
    return figures


async def wait_back(ctx: Context, target: Target, moves: Moves) -> None:
    """Until every client received a message on a new process, or ``--reload-timeout`` s."""
    timeout = ctx.opts.reload_timeout

    def state() -> tuple[str, float, str]:
        back, received = len(moves.back_ns), len(moves.received_ns)
        return (
            f"{target.name} reload",
            received / moves.count,
            f"{back} back, {received} received",
        )

    async with showing(ctx.progress, state):
        try:
            async with asyncio.timeout(timeout):
                await moves.all_received.wait()
        except TimeoutError:
            ctx.progress.note(
                f"{target.name}: {moves.count - len(moves.received_ns)} clients not back "
                f"within {timeout:g} s"
            )


async def settled(ctx: Context, crowd: Crowd, moves: Moves, window: Window) -> dict[str, Any]:
    """Once every message reached every stream of its room (or nothing more
    came for ``--drain-timeout`` s): the figures."""
    if not window.accepted:
        raise BenchError("no message was accepted")
    by_room = crowd.by_room()
    expected = sum(len(by_room.get(window.rooms[seq], ())) for seq in window.accepted)
    recorder = crowd.recorder
    last, last_count = time.monotonic(), -1
    while recorder.first_copies < expected and time.monotonic() - last < ctx.opts.drain_timeout:
        if recorder.first_copies != last_count:
            last, last_count = time.monotonic(), recorder.first_copies
        await asyncio.sleep(0.05)
    figures = tally(window, crowd, expected)
    reasons: Counter[str] = Counter()
    for sub in crowd.subs:
        reasons.update(sub.close_reasons)
        if sub.error:
            reasons[sub.error] += 1
    failures = window.failures
    steady = sorted(moves.steady)
    figures.update(
        {
            "clients": moves.count,
            "all_back_s": moves.seconds(moves.back_ns),
            "all_received_s": moves.seconds(moves.received_ns),
            "back": len(moves.back_ns),
            "steady_latency_p99_ms": percentile(steady, 99),
            "http_503": sum(n for r, n in (reasons + failures).items() if "503" in r),
            "refused": sum(
                n
                for r, n in (reasons + failures).items()
                if "Refused" in r or "Reset" in r or "Disconnected" in r
            ),
            "reconnect_reasons": dict(reasons.most_common(6)),
            "details": {
                "deliveries of messages sent before the stream opened": moves.caught_up,
                "streams_by_kind": dict(Counter(s.kind for s in crowd.live)),
            },
        }
    )
    return figures


def problems(target: str, figures: dict[str, Any]) -> list[str]:
    found = lost_or_duplicated(target, figures)
    if is_chat(target) and figures.get("http_503"):
        found.append(f"http_503: {figures['http_503']}")
    return found
