"""``GET /metrics``: Prometheus text, totals over every worker of every instance.

Each worker counts for itself and, on every heartbeat (and before answering
``/metrics``), adds what it counted since the last time to totals kept in
Redis, and writes its gauges (open connections) to a hash that expires when
the worker stops refreshing it. Any worker can then answer for all. The
totals only grow, across reloads and replaced workers, as Prometheus
expects of a counter; a worker killed outright loses at most one heartbeat
of counts.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the counters themselves are used by the hub, which knows no Redis
    import redis.asyncio as aioredis

REGISTRY_KEY = "chat:metrics:workers"
TOTALS_KEY = "chat:metrics:totals"
TRANSPORTS = ("sse", "ws")
COUNTERS = ("published", "deliveries", "dropped")
LIMITED = "limited_"  # totals fields "limited_<kind>"


def _snapshot_key(member: str) -> str:
    return f"chat:metrics:worker:{{{member}}}"


@dataclasses.dataclass
class Metrics:
    """This worker's own counters."""

    instance: str  # host and main pid: one running chat-server
    worker: int
    reloads: int  # how many reloads the instance has done
    connections: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    published: int = 0
    deliveries: int = 0
    dropped: int = 0  # slow consumers cut off
    closed: int = 0  # connections closed (this worker, since it started)
    # Requests refused for being over a budget, by kind (see server.ratelimit).
    limited: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    # The longest the event loop was held up, and the longest heartbeat
    # tick, since the worker started (seconds).
    loop_stall_max_s: float = 0.0
    heartbeat_max_s: float = 0.0
    gc_pause_max_s: float = 0.0  # the longest full garbage collection
    loop_stalls: int = 0  # stalls over 100 ms
    heartbeat_slow: int = 0  # ticks over 100 ms

    @property
    def member(self) -> str:
        return f"{self.instance}|{self.worker}"

    def snapshot(self) -> dict[Any, Any]:
        """The gauges and labels of this worker."""
        return {
            "instance": self.instance,
            "worker": str(self.worker),
            "reloads": str(self.reloads),
            **{f"connections_{t}": str(self.connections[t]) for t in TRANSPORTS},
            "loop_stall_max_s": f"{self.loop_stall_max_s:.6f}",
            "heartbeat_max_s": f"{self.heartbeat_max_s:.6f}",
            "gc_pause_max_s": f"{self.gc_pause_max_s:.6f}",
            "loop_stalls": str(self.loop_stalls),
            "heartbeat_slow": str(self.heartbeat_slow),
        }

    def counts(self) -> dict[str, int]:
        counts = {name: getattr(self, name) for name in COUNTERS}
        counts.update({f"{LIMITED}{kind}": n for kind, n in self.limited.items()})
        return counts


class MetricsStore:
    def __init__(self, redis: aioredis.Redis, metrics: Metrics, *, ttl_s: float) -> None:
        self.redis = redis
        self.metrics = metrics
        self.ttl_ms = int(ttl_s * 1000)
        self._pushed = dict.fromkeys(COUNTERS, 0)  # what the totals already hold

    async def push(self) -> None:
        key = _snapshot_key(self.metrics.member)
        now_ms = time.time() * 1000
        counts = self.metrics.counts()
        pushed, self._pushed = self._pushed, counts
        # One transaction: the totals get each increment exactly once. What
        # it adds is taken before the first await, so that pushes that
        # overlap (concurrent scrapes) never add the same counts twice.
        pipe = self.redis.pipeline(transaction=True)
        for name, value in counts.items():
            if value != pushed.get(name, 0):
                pipe.hincrby(TOTALS_KEY, name, value - pushed.get(name, 0))
        pipe.hset(key, mapping=self.metrics.snapshot())
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(REGISTRY_KEY, {self.metrics.member: now_ms + self.ttl_ms})
        # Workers that stopped reporting leave the registry, and the registry
        # itself goes when no worker is left.
        pipe.zremrangebyscore(REGISTRY_KEY, "-inf", now_ms)
        pipe.pexpire(REGISTRY_KEY, self.ttl_ms)
        try:
            await pipe.execute()
        except BaseException:
            # Not added (a transaction is all or nothing): the next push adds it.
            for name, value in counts.items():
                self._pushed[name] = self._pushed.get(name, 0) - (value - pushed.get(name, 0))
            raise

    async def collect(self) -> tuple[list[dict[str, str]], dict[str, str]]:
        """The snapshots of every live worker (this one's fresh) and the totals."""
        await self.push()
        members = await self.redis.zrange(REGISTRY_KEY, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(TOTALS_KEY)
        for member in members:
            pipe.hgetall(_snapshot_key(str(member)))
        totals, *snapshots = await pipe.execute()
        return [snapshot for snapshot in snapshots if snapshot], totals


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshots: list[dict[str, str]], totals: dict[str, str]) -> str:
    """Prometheus text exposition format (version 0.0.4)."""

    def total(field: str) -> int:
        if field in COUNTERS:
            return int(totals.get(field, 0))
        return sum(int(s.get(field, 0)) for s in snapshots)

    lines = [
        "# HELP chat_connections Open streaming connections, by transport.",
        "# TYPE chat_connections gauge",
        *(f'chat_connections{{transport="{t}"}} {total("connections_" + t)}' for t in TRANSPORTS),
        "# HELP chat_messages_published_total Messages stored (answered 201 or acked).",
        "# TYPE chat_messages_published_total counter",
        f"chat_messages_published_total {total('published')}",
        "# HELP chat_deliveries_total Messages written to streaming clients.",
        "# TYPE chat_deliveries_total counter",
        f"chat_deliveries_total {total('deliveries')}",
        "# HELP chat_slow_consumers_dropped_total Streams cut off for not keeping up.",
        "# TYPE chat_slow_consumers_dropped_total counter",
        f"chat_slow_consumers_dropped_total {total('dropped')}",
        "# HELP chat_rate_limited_total Requests refused for being over a budget, by kind.",
        "# TYPE chat_rate_limited_total counter",
        *(
            f'chat_rate_limited_total{{kind="{_escape(field.removeprefix(LIMITED))}"}} {n}'
            for field, n in sorted(totals.items())
            if field.startswith(LIMITED)
        ),
        "# HELP chat_reloads_total Reloads (SIGHUP) of each running instance.",
        "# TYPE chat_reloads_total counter",
    ]
    reloads: dict[str, int] = {}
    for s in snapshots:
        instance = s.get("instance", "")
        reloads[instance] = max(reloads.get(instance, 0), int(s.get("reloads", 0)))
    lines += [
        f'chat_reloads_total{{instance="{_escape(i)}"}} {n}' for i, n in sorted(reloads.items())
    ]
    lines += [
        "# HELP chat_worker_up Workers alive and reporting.",
        "# TYPE chat_worker_up gauge",
    ]
    workers = sorted(snapshots, key=lambda s: (s.get("instance", ""), int(s.get("worker", 0))))
    for name, field, help_text in (
        ("chat_worker_up", "", "Workers alive and reporting."),
        ("chat_loop_stall_max_seconds", "loop_stall_max_s", "Longest event loop stall so far."),
        ("chat_heartbeat_max_seconds", "heartbeat_max_s", "Longest heartbeat tick so far."),
        ("chat_gc_pause_max_seconds", "gc_pause_max_s", "Longest full garbage collection."),
        ("chat_loop_stalls_total", "loop_stalls", "Event loop stalls over 100 ms."),
        ("chat_heartbeat_slow_total", "heartbeat_slow", "Heartbeat ticks over 100 ms."),
    ):
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in workers:
            instance, worker = _escape(s.get("instance", "")), _escape(s.get("worker", ""))
            value = s.get(field, "0") if field else "1"
            lines.append(f'{name}{{instance="{instance}",worker="{worker}"}} {value}')
    return "\n".join(lines) + "\n"
