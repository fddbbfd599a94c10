"""The worker heartbeat: pings, idle connections, leases; and the loop's health.

Every connection is pinged once per ``heartbeat_s``, WebSockets whose
client has been silent past ``idle_timeout_s`` are closed, and this worker's
leases on its rooms are renewed in Redis (sweeping the connections of dead
workers). The work is spread over the interval: the timer
(``aiotools.create_timer``) ticks about twice a second, each tick taking its
share of the connections and rooms, so that ten thousand connections do not
all get their ping (and their client's wake-up) in the same instant, and a
tick stays short on a busy machine (at 17,000 connections a share is about
570 pings). A tick visits its connections in batches, letting the loop run
in between.

About once a second a tick also samples the worker's tasks, open
descriptors and resident memory into its gauges
(:mod:`server.common.resources`: at that many connections a sample costs
a few milliseconds).

A connection that cannot take its ping (its client stopped reading) queues
it, and is cut off when it has not drained within ``idle_timeout_s`` (see
:mod:`server.core.subscription`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ..common import resources
from ..common.config import Config
from ..common.metrics import Metrics
from ..core.close_reason import CloseReason
from ..core.hub import Hub
from ..core.model import PING
from ..core.subscription import Subscription
from ..store import failures
from ..store.connection_registry import ConnectionRegistry
from .expiry import Expiries

log = logging.getLogger(__name__)

SLOW_TICK_S = 0.1  # a tick longer than this is logged
TICK_S = 0.5  # about how often the heartbeat ticks
MAX_PARTS = 30  # the most ticks a heartbeat interval is spread over
SAMPLE_EVERY_S = 1.0  # how often the worker's resources are sampled, about
# Allocations (less deallocations) of tracked objects between two
# collections of the youngest generation (CPython's default is 700).
YOUNG_OBJECTS = 10_000


class LoopWatch:
    """Measures how late the event loop runs a callback: what every client waits too.

    A callback every ``every_s`` notes how much later than asked it ran; the
    worst is kept in the worker's metrics, and a stall over ``warn_s`` is
    logged (at most once per ``every_s`` of course, since the check itself
    waits for the loop).
    """

    def __init__(self, metrics: Metrics, every_s: float = 0.05, warn_s: float = 0.1) -> None:
        self.metrics = metrics
        self.every_s = every_s
        self.warn_s = warn_s
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._gc_started = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.every_s
        self._handle = loop.call_at(self._due, self._check)
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # A full collection walks every live object: with tens of thousands
        # of connections it is what holds the loop longest.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info.get("generation") == 2:
            took = time.perf_counter() - self._gc_started
            self.metrics.gc_paused(took)
            if took > self.warn_s:
                log.warning("a full garbage collection took %.0f ms", took * 1000)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        late = loop.time() - self._due
        self.metrics.loop_late(late, stalled=late > self.warn_s)
        if late > self.warn_s:
            log.warning("event loop stalled for %.0f ms", late * 1000)
        self._due = loop.time() + self.every_s
        self._handle = loop.call_at(self._due, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)


class FrozenSurvivors:
    """Full garbage collections that do not walk the connections held for long.

    A full collection walks every live object: at ten thousand connections
    on a worker, half a second with the loop held. After each one, its
    survivors are frozen (``gc.freeze``), so that later collections walk only
    what was allocated since. A frozen object that becomes cyclic garbage is
    not reclaimed until it is unfrozen (a closed connection whose handler was
    cancelled leaves a few such cycles, holding the connection's objects):
    once as many connections have closed since the last freeze as a quarter
    of those open then (and at least ``min_closed``), everything is unfrozen,
    and the next full collection walks it all again. An idle crowd is never
    walked twice; churn costs what it costs without freezing.

    What the worker holds from its start (modules, the app) is frozen at
    once, so that no collection walks it, not even the first ones. And the
    youngest generation is collected every :data:`YOUNG_OBJECTS` allocations
    instead of 700: a burst of connects allocates the objects of each
    request that lives a few awaits, and at 700 many of them are still alive
    at a collection and move on to the older generations (and their
    collections), which then cost a third of a storm's CPU.
    """

    def __init__(self, metrics: Metrics, min_closed: int = 1000) -> None:
        self.metrics = metrics
        self.min_closed = min_closed
        self._closed_at_freeze = 0
        self._open_at_freeze = 0
        self._scheduled = False
        self._frozen = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threshold = gc.get_threshold()  # (what stop() restores)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        self._threshold = gc.get_threshold()
        gc.set_threshold(YOUNG_OBJECTS, *self._threshold[1:])
        self._freeze()

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.set_threshold(*self._threshold)
        gc.unfreeze()
        self._frozen = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        loop = self._loop
        if phase == "stop" and info.get("generation") == 2 and loop and not self._scheduled:
            # Not from inside the collector (which may run in any thread):
            # on the loop, once it has returned.
            self._scheduled = True
            loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        self._scheduled = False
        gc.freeze()
        self._frozen = True
        self._closed_at_freeze = self.metrics.closed
        self._open_at_freeze = sum(self.metrics.connections.values())

    def check(self) -> None:
        """Unfreeze once enough connections have closed (call now and then)."""
        # (Not gc.get_freeze_count(): it walks every frozen object.)
        if not self._frozen:
            return
        closed = self.metrics.closed - self._closed_at_freeze
        if closed >= max(self.min_closed, self._open_at_freeze // 4):
            gc.unfreeze()
            self._frozen = False


class Heartbeat:
    def __init__(
        self,
        hub: Hub,
        connections: ConnectionRegistry,
        config: Config,
        on_tick: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        self.hub = hub
        self.connections = connections
        self.idle_timeout_s = config.idle_timeout_s
        # The interval is spread over ``parts`` ticks of ``interval`` each.
        self.parts = max(1, min(MAX_PARTS, round(config.heartbeat_s / TICK_S)))
        self.interval = config.heartbeat_s / self.parts
        self._ticks = 0
        self._pinging_s = 0.0  # how long the last tick's pings took
        self._sampled = 0.0  # when the resources were last sampled (time.monotonic())
        self._running = False  # a tick is under way
        self._failing = False
        self._failure_level = logging.WARNING
        self.frozen = FrozenSurvivors(hub.metrics)
        self.expiries = Expiries(config.auth_leeway_s)
        # What else writes to Redis once a tick, after the leases (each a
        # round trip or so, failing as the leases' renewal does).
        self.on_tick = tuple(on_tick)

    async def tick(self, interval: float) -> None:
        # The timer fires every interval, whether or not the last tick is
        # done: a tick that finds it still running (the worker is overloaded,
        # as while thousands of connections arrive) leaves it alone, and the
        # shares wait their turn, rather than ticks piling up on each other.
        if self._running:
            log.debug("heartbeat tick skipped: the last one is still running")
            return
        self._running = True
        started = time.perf_counter()
        try:
            await self._tick()
        finally:
            self._running = False
            took = time.perf_counter() - started
            metrics = self.hub.metrics
            metrics.heartbeat_took(took, slow=took > SLOW_TICK_S)
            if time.monotonic() - self._sampled >= SAMPLE_EVERY_S - TICK_S / 2:
                # Tasks, descriptors and memory, for the gauges a soak watches.
                self._sampled = time.monotonic()
                metrics.sampled(resources.sample())
            if took > SLOW_TICK_S:
                log.warning(
                    "heartbeat took %.0f ms over %d connections (%.0f ms of it pinging)",
                    took * 1000,
                    sum(len(room.subscriptions) for room in self.hub.rooms.values()),
                    self._pinging_s * 1000,
                )

    async def _tick(self) -> None:
        now = time.monotonic()
        part = self._ticks % self.parts
        self._ticks += 1

        wall = time.time()
        expiries = self.expiries

        def visit(sub: Subscription) -> None:
            if sub.last_seen is not None and now - sub.last_seen > self.idle_timeout_s:
                log.info("closing connection %s in %s: client silent", sub.id, sub.room.name)
                sub.close(CloseReason.IDLE)
                return
            expiry = sub.expiry
            if expiry is not None:
                expiries.check(sub, expiry, wall)
                if sub.closed:
                    return
            sub.deliver(PING)

        started = time.perf_counter()
        await self.hub.visit(visit, part, self.parts)
        self._pinging_s = time.perf_counter() - started
        self.frozen.check()
        try:
            # Presence itself is not re-read here: every change publishes a
            # notice (joins, leaves, renames, and the sweep of dead workers'
            # connections that this refresh does), and a reconnected relay
            # re-reads its rooms.
            await self.connections.refresh(self.parts)
            for write in self.on_tick:
                await write()
        except failures.FAILURES as exc:
            self.hub.metrics.redis_error()
            if not self._failing:
                # Losing Redis is logged once per worker, by its pub/sub
                # relay; anything else (a full or read-only Redis) is the
                # heartbeat's to tell.
                lost = isinstance(exc, failures.LOST)
                self._failure_level = logging.DEBUG if lost else logging.WARNING
                log.log(self._failure_level, "heartbeat cannot update Redis: %s", exc)
            self._failing = True
        else:
            if self._failing:
                log.log(self._failure_level, "heartbeat updates Redis again")
            self._failing = False
