"""``GET /metrics``: this instance's Prometheus metrics, exact at scrape time.

Each worker writes every count as it happens to memory-mapped files in the
instance's private directory (prometheus_client's multiprocess mode, see
:mod:`server.process.instance_metrics`); whichever worker answers a scrape sums the
files of every process of the instance, so the answer is the same from any
of them and holds everything counted before the scrape arrived. A worker
killed outright loses nothing: its counts were in its file already. Other
instances on the same Redis have directories of their own, and are scraped
on their own.

A count written to its file costs about a microsecond, so hot paths add a
batch at once: a room's dispatch adds the deliveries it wrote to all its
subscribers in one step, and observes the delivery latency once per message,
not once per subscriber.

An app built without a directory (in-process tests) keeps its values in its
own registry and renders them alone.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import time
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .prometheus_compat import values_in_files
from .resources import Resources

# prometheus_client's switch to its multiprocess mode: the main process sets
# it to the instance's directory before anything imports prometheus_client.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
TRANSPORTS = ("sse", "ws")


def require_multiprocess(directory: str) -> None:
    """Fail unless new metrics will be written to files in ``directory``."""
    if os.environ.get(MULTIPROC_DIR_ENV) != directory:
        raise RuntimeError(f"{MULTIPROC_DIR_ENV} must be {directory!r} before metrics are made")
    if not values_in_files():
        raise RuntimeError(
            f"prometheus_client was imported before {MULTIPROC_DIR_ENV} was set: "
            "its metrics would count in this process only"
        )


# Between a scrape, which reads every file of the directory (shared), and
# the main process folding a dead worker's files into the others (exclusive):
# a scrape never counts a value twice, nor misses one.
_LOCK_FILE = "scrape.lock"


@contextlib.contextmanager
def directory_lock(directory: str, *, exclusive: bool) -> Iterator[None]:
    fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # (and the lock with it)


LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REPLAY_BUCKETS = (0, 1, 10, 50, 100, 500, 1000, 5000, 10000)


class Metrics:
    """One worker's metrics.

    Beside the Prometheus values, plain fields keep what other parts of the
    worker read back: open connections by transport, streams closed, and
    the longest loop stall, heartbeat tick and collection so far.
    """

    def __init__(self, worker: int = 0, directory: str | None = None) -> None:
        if directory is not None:
            require_multiprocess(directory)
        self.directory = directory
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.connections: collections.Counter[str] = collections.Counter()
        self.closed = 0  # streams closed on this worker since it started

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def worker_gauge(name: str, doc: str) -> Gauge:
            # One series per live worker process (the pid label is added).
            gauge = Gauge(name, doc, ["worker"], registry=registry, multiprocess_mode="liveall")
            return gauge.labels(str(worker))

        def longest(name: str, doc: str) -> _Longest:
            return _Longest(worker_gauge(name, doc))

        self._published = counter("chat_messages_published", "Messages stored (201 or acked).")
        self._deliveries = counter("chat_deliveries", "Messages written to streaming clients.")
        self._dropped = counter("chat_slow_consumers_dropped", "Streams cut off for lagging.")
        limited = counter("chat_rate_limited", "Requests refused over a budget.", ["kind"])
        self._limited = limited
        self._redis_errors = counter("chat_redis_errors", "Redis operations that failed.")
        self._reconnects = counter("chat_redis_reconnects", "Pub/sub reconnections to Redis.")
        opened = counter("chat_connections_opened", "Streams opened, by transport.", ["transport"])
        current = Gauge(
            "chat_connections",
            "Open streaming connections, by transport.",
            ["transport"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._opened = {t: opened.labels(t) for t in TRANSPORTS}
        self._current = {t: current.labels(t) for t in TRANSPORTS}
        self._publish_latency = Histogram(
            "chat_publish_latency_seconds",
            "From a message's request to its storage in Redis.",
            registry=registry,
            buckets=LATENCY_BUCKETS_S,
        )
        self._delivery_latency = Histogram(
            "chat_delivery_latency_seconds",
            "From a message's storage to its writing to this worker's clients.",
            registry=registry,
            buckets=LATENCY_BUCKETS_S,
        )
        self._replay = Histogram(
            "chat_replay_messages",
            "Messages sent by a resume's replay.",
            registry=registry,
            buckets=REPLAY_BUCKETS,
        )
        loop_stalls = counter("chat_loop_stalls", "Event loop stalls over 100 ms.", ["worker"])
        slow_beats = counter("chat_heartbeat_slow", "Heartbeat ticks over 100 ms.", ["worker"])
        self._loop_stalls = loop_stalls.labels(str(worker))
        self._heartbeat_slow = slow_beats.labels(str(worker))
        self.loop_stall_max = longest(
            "chat_loop_stall_max_seconds", "Longest event loop stall so far."
        )
        self.heartbeat_max = longest("chat_heartbeat_max_seconds", "Longest heartbeat tick so far.")
        self.gc_pause_max = longest(
            "chat_gc_pause_max_seconds", "Longest full garbage collection so far."
        )
        worker_gauge("chat_worker_up", "Worker processes serving.").set(1)
        self._tasks = worker_gauge("chat_worker_tasks", "asyncio tasks alive in the worker.")
        self._fds = worker_gauge("chat_worker_open_fds", "Open file descriptors of the worker.")
        self._rss = worker_gauge("chat_worker_rss_bytes", "Resident memory of the worker.")
        self._server_api = counter(
            "chat_server_api_requests",
            "Server API requests, by method, route template and status.",
            ["method", "route", "status"],
        )

    # -- messages ------------------------------------------------------------

    def published(self, took_s: float) -> None:
        """A message was stored, ``took_s`` after its request arrived."""
        self._published.inc()
        self._publish_latency.observe(took_s)

    def delivered(self, n: int = 1) -> None:
        self._deliveries.inc(n)

    def dispatched(self, delivered: int, stored_ms: Sequence[int]) -> None:
        """A room's dispatch wrote ``delivered`` messages in all, of the
        messages stored at ``stored_ms`` (their ids' milliseconds)."""
        if delivered:
            self._deliveries.inc(delivered)
        now_ms = time.time() * 1000
        for ms in stored_ms:
            # Redis' clock stamped the id: another host's may be a little behind.
            self._delivery_latency.observe(max(0.0, now_ms - ms) / 1000)

    def replayed(self, messages: int) -> None:
        self._replay.observe(messages)

    # -- connections and refusals ---------------------------------------------

    def connection_opened(self, transport: str) -> None:
        self.connections[transport] += 1
        self._opened[transport].inc()
        self._current[transport].inc()

    def connection_closed(self, transport: str) -> None:
        self.connections[transport] -= 1
        self._current[transport].dec()

    def slow_consumer_dropped(self) -> None:
        self._dropped.inc()

    def rate_limited(self, kind: str) -> None:
        self._limited.labels(kind).inc()

    def redis_error(self) -> None:
        self._redis_errors.inc()

    def redis_reconnected(self) -> None:
        self._reconnects.inc()

    # -- the server API -------------------------------------------------------

    def server_api_request(self, method: str, route: str, status: int) -> None:
        self._server_api.labels(method, route, str(status)).inc()

    # -- the worker's health --------------------------------------------------

    def loop_late(self, late_s: float, stalled: bool) -> None:
        """The loop ran a timer ``late_s`` late (``stalled``: over the warning)."""
        self.loop_stall_max.note(late_s)
        if stalled:
            self._loop_stalls.inc()

    def heartbeat_took(self, took_s: float, slow: bool) -> None:
        self.heartbeat_max.note(took_s)
        if slow:
            self._heartbeat_slow.inc()

    def gc_paused(self, took_s: float) -> None:
        self.gc_pause_max.note(took_s)

    def sampled(self, now: Resources) -> None:
        """The worker's resources, as the heartbeat read them."""
        self._tasks.set(now.tasks)
        if now.fds is not None:
            self._fds.set(now.fds)
        if now.rss_bytes is not None:
            self._rss.set(now.rss_bytes)

    # -- reading ----------------------------------------------------------------

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """This process' own value of one sample (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0


class _Longest:
    """The longest of some duration so far, in seconds: kept here to compare
    with, and written to its gauge only when it grows."""

    def __init__(self, gauge: Gauge) -> None:
        self.seconds = 0.0
        self._gauge = gauge

    def note(self, seconds: float) -> None:
        if seconds > self.seconds:
            self.seconds = seconds
            self._gauge.set(seconds)


def render(metrics: Metrics) -> bytes:
    """The Prometheus text of the instance: every process' files summed, or,
    without a directory, this process' own values."""
    if metrics.directory is None:
        return generate_latest(metrics.registry)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics.directory)  # type: ignore[no-untyped-call]
    with directory_lock(metrics.directory, exclusive=False):
        return generate_latest(registry)
