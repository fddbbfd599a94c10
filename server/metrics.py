"""``GET /metrics``: Prometheus text, totals over every worker of every instance.

Each worker counts for itself and writes its counters to Redis on every
heartbeat (and before answering ``/metrics``), in a hash that expires when
the worker stops refreshing it. Any worker can then answer for all: it sums
the hashes of the workers that are alive. A worker that died stops counting
as up within a few heartbeats; counters of a replaced worker start again at
zero, which Prometheus' ``rate()`` treats as a counter reset.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the counters themselves are used by the hub, which knows no Redis
    import redis.asyncio as aioredis

REGISTRY_KEY = "chat:metrics:workers"
TRANSPORTS = ("sse", "ws")


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

    @property
    def member(self) -> str:
        return f"{self.instance}|{self.worker}"

    def snapshot(self) -> dict[Any, Any]:
        return {
            "instance": self.instance,
            "worker": str(self.worker),
            "reloads": str(self.reloads),
            "published": str(self.published),
            "deliveries": str(self.deliveries),
            "dropped": str(self.dropped),
            **{f"connections_{t}": str(self.connections[t]) for t in TRANSPORTS},
        }


class MetricsStore:
    def __init__(self, redis: aioredis.Redis, metrics: Metrics, *, ttl_s: float) -> None:
        self.redis = redis
        self.metrics = metrics
        self.ttl_ms = int(ttl_s * 1000)

    async def push(self) -> None:
        key = _snapshot_key(self.metrics.member)
        now_ms = time.time() * 1000
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=self.metrics.snapshot())
        pipe.pexpire(key, self.ttl_ms)
        pipe.zadd(REGISTRY_KEY, {self.metrics.member: now_ms + self.ttl_ms})
        # Workers that stopped reporting leave the registry, and the registry
        # itself goes when no worker is left.
        pipe.zremrangebyscore(REGISTRY_KEY, "-inf", now_ms)
        pipe.pexpire(REGISTRY_KEY, self.ttl_ms)
        await pipe.execute()

    async def collect(self) -> list[dict[str, str]]:
        """The snapshots of every live worker, this one's freshly pushed."""
        await self.push()
        members = await self.redis.zrange(REGISTRY_KEY, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(_snapshot_key(str(member)))
        return [snapshot for snapshot in await pipe.execute() if snapshot]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshots: list[dict[str, str]]) -> str:
    """Prometheus text exposition format (version 0.0.4)."""

    def total(field: str) -> int:
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
    for s in sorted(snapshots, key=lambda s: (s.get("instance", ""), int(s.get("worker", 0)))):
        instance, worker = _escape(s.get("instance", "")), _escape(s.get("worker", ""))
        lines.append(f'chat_worker_up{{instance="{instance}",worker="{worker}"}} 1')
    return "\n".join(lines) + "\n"
