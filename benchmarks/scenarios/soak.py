"""soak: hours of steady streams, churn, publishing and faults; do resources come back?

The chat target only, on the harness's own Redis (persistent: appendfsync
always, so that a restart loses nothing). For ``--duration`` s (3600 by
default):

- ``--subscribers`` steady streams (2,000; half SSE, half WebSocket) over
  the first half of the ``--soak-rooms`` rooms (200), each checking that
  every message of its room arrives once and in order, for the whole run
  (every 10 s a few are dropped and resume after their last id, as the
  page does; each keeps its session cookie);
- ``--churners`` churning loops (2,000), each a visitor of its own
  connecting for 1-120 s to a random room, leaving cleanly or by a reset
  (half each), a quarter never reading;
- publishing at ``--rate`` msg/s (50) in total over the active rooms, by
  20 visitors; the second half of the rooms turns over (every 30 s one goes
  idle and a new one appears), and there a message in twenty is edited or
  deleted by its author; every stream's publisher says it is typing now
  and then;
- faults and pauses on :func:`benchmarks.soak_verdict.schedule`'s
  schedule: SIGHUP, SIGKILL of a worker, a Redis restart (SIGKILL and
  start again on its port), and pauses of churn and publishing, at each of
  which the server is read once its numbers stop moving
  (:func:`benchmarks.soak_load.settle`);
- a sample every ``--sample-every`` s (10) of each worker's RSS, fds and
  tasks and the open streams (one ``/metrics`` scrape has every worker's
  gauges, by pid), Redis' ``used_memory``, its keys by kind and stream
  entries, publish and delivery latency, errors by kind.

The verdict (:func:`benchmarks.soak_verdict.judge`) is printed and stored
with the samples; PNG plots go beside the JSON.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import datetime
import fnmatch
import os
import random
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from server.store import keys as chat_keys
from server.store.session_store import COOKIE_NAME

from .. import soak_verdict
from ..clients import Recorder, Subscriber, open_all, stop_all
from ..measure import Context, Metric, percentile
from ..procfs import serving_workers
from ..soak_check import count_kinds
from ..soak_load import churn_once, settle, worker_gauges
from ..targets import BenchError, Target

DESCRIPTION = (
    "hours of steady streams, churning connections, publishing and faults: "
    "whether memory, descriptors, tasks, connections and Redis keys come back"
)
DEFAULTS: dict[str, Any] = {
    "subscribers": 2000,
    "transport": "mixed",
    "rate": 50.0,
    "duration": 3600.0,
}
DEFAULT_TARGETS = "chat"
PERSISTENT_REDIS = True

METRICS = [
    Metric("steady streams", "steady", ratio=False),
    Metric("churning loops", "churners", ratio=False),
    Metric("messages accepted", "published", ratio=False),
    Metric("connections churned", "churned", ratio=False),
    Metric("lost", "lost", ratio=False),
    Metric("duplicates", "duplicates", ratio=False),
    Metric("out of order", "out_of_order", ratio=False),
    Metric("worker RSS at the pauses, slope (%/h)", "rss_percent_per_hour", "{:.2f}", ratio=False),
    Metric("tracebacks in the server's log", "tracebacks", ratio=False),
]

PUBLISHERS = 20
ROTATE_EVERY_S = 30.0
DROP_EVERY_S = 10.0
DROP_SHARE = 0.005
EDIT_EVERY = 20
TYPING_EVERY = 10
POST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 200


def cases(opts: Any) -> list[dict[str, Any]]:
    return [
        {
            "label": f"{opts.duration:g} s: {opts.subscribers} steady streams, {opts.churners} "
            f"churning loops, {opts.rate:g} msg/s over {opts.soak_rooms} rooms, faults",
            "short": "soak",
            "transport": "mixed",
        }
    ]


def problems(name: str, figures: dict[str, Any]) -> list[str]:
    return list(figures.get("verdict", {}).get("problems", []))


def default_json_path(opts: Any) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M")
    return os.path.join("benchmarks", "results", f"soak-{opts.duration:g}s-{when}.json")


def after_record(record: dict[str, Any], json_path: str) -> dict[str, str]:
    """Draw the plots of the run's soak beside its JSON; their names by family."""
    figures = record["cases"][0]["results"].get("chat", {})
    if "samples" not in figures:
        return {}
    stem = os.path.splitext(os.path.basename(json_path))[0]
    return soak_verdict.plot(figures, os.path.dirname(os.path.abspath(json_path)), stem)


class Soak:
    def __init__(self, target: Target, ctx: Context) -> None:
        self.target, self.ctx, self.opts = target, ctx, ctx.opts
        self.base = target.base_url
        self.t0 = time.monotonic()
        self.rng = random.Random(self.opts.seed)
        rooms = self.opts.soak_rooms
        self.home = [f"soak-{i}" for i in range(max(1, rooms // 2))]
        self.turning = [f"soak-t{i}" for i in range(rooms - len(self.home))]
        self.created = len(self.turning)
        self.recorder = Recorder()
        self.steady: list[Subscriber] = []
        self.seq: Counter[str] = Counter()
        self.accepted: dict[str, list[int]] = {room: [] for room in self.home}
        self.mine: dict[str, list[tuple[aiohttp.ClientSession, str]]] = {}
        self.errors: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.publish_rtts = array.array("d")
        self.publishers: list[aiohttp.ClientSession] = []
        self.cookies: list[str] = []
        self.churning = asyncio.Event()
        self.churn_tasks: set[asyncio.Task[str]] = set()
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.pauses: list[dict[str, Any]] = []
        self.phase = "churn"
        self.in_flight = 0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def event(self, kind: str, detail: str = "") -> None:
        self.events.append({"t": self.now(), "kind": kind, "detail": detail})
        self.ctx.progress.note(f"soak {self.now():.0f} s: {kind} {detail}".rstrip())

    # -- the population ------------------------------------------------------------

    @staticmethod
    async def visitor(http: aiohttp.ClientSession) -> str:
        """A new visitor's session cookie."""
        async with http.get("/api/session") as resp:
            if resp.status != 200 or COOKIE_NAME not in resp.cookies:
                raise BenchError(f"GET /api/session: HTTP {resp.status}, no session cookie")
            return resp.cookies[COOKIE_NAME].value

    async def start(self) -> None:
        endpoint = self.target.endpoint()
        n = self.opts.subscribers
        kinds = ["sse" if i % 2 == 0 else "ws" for i in range(n)]
        self.steady = [
            Subscriber(
                kind,
                endpoint,
                self.home[i % len(self.home)],
                self.recorder,
                deflate=self.opts.deflate,
                keep_cookie=True,
            )
            for i, kind in enumerate(kinds)
        ]
        opened = await open_all(self.steady, self.opts.connect_concurrency, 300)
        if len(opened) < n:
            raise BenchError(f"only {len(opened)} of {n} steady streams opened")
        for _ in range(PUBLISHERS):
            http = aiohttp.ClientSession(self.base, cookie_jar=aiohttp.CookieJar(unsafe=True))
            self.publishers.append(http)
            await self.visitor(http)
        gate = asyncio.Semaphore(50)
        # No jar: every request a new visitor.
        async with aiohttp.ClientSession(self.base, cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def one() -> str:
                async with gate:
                    return await self.visitor(http)

            self.cookies = await asyncio.gather(*(one() for _ in range(self.opts.churners)))

    async def close(self) -> None:
        await stop_all(self.steady)
        for http in self.publishers:
            await http.close()

    # -- load ----------------------------------------------------------------------

    async def publish(self) -> None:
        interval, tick = 1 / self.opts.rate, 0
        started = time.monotonic()
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, started + tick * interval - time.monotonic()))
            if self.phase != "churn":
                started, tick = time.monotonic(), 0
                continue
            if self.in_flight >= MAX_IN_FLIGHT:
                self.errors["post skipped (too many in flight)"] += 1
                continue
            rooms = self.home + self.turning
            room = rooms[tick % len(rooms)]
            http = self.publishers[tick % PUBLISHERS]
            kind, own = "post", None
            if room in self.turning and self.mine.get(room) and tick % EDIT_EVERY == 0:
                kind = "edit" if tick % (2 * EDIT_EVERY) else "delete"
                # (Taken now: the room may turn idle.) An edit takes the newest,
                # within the edit window; a delete the oldest, which any time allows.
                own = self.mine[room].pop(-1 if kind == "edit" else 0)
            elif tick % TYPING_EVERY == 0:
                kind = "typing"
            self.in_flight += 1
            task = asyncio.create_task(self.request(kind, http, room, own))
            task.add_done_callback(lambda _: self._done())

    def _done(self) -> None:
        self.in_flight -= 1

    async def request(
        self,
        kind: str,
        http: aiohttp.ClientSession,
        room: str,
        own: tuple[aiohttp.ClientSession, str] | None = None,
    ) -> None:
        """A post, a typing notice, or an edit or delete of ``own`` (its author
        and its id)."""
        path = f"/api/rooms/{room}/messages"
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
        try:
            if kind == "typing":
                async with http.post(f"/api/rooms/{room}/typing", timeout=timeout) as resp:
                    self.count(kind, resp.status, (200, 202, 204))
            elif own is not None:
                author, message_id = own
                url = f"{path}/{message_id}"
                if kind == "edit":
                    answer = author.patch(url, json={"text": "soak edit"}, timeout=timeout)
                else:
                    answer = author.delete(url, timeout=timeout)
                async with answer as resp:
                    self.count(kind, resp.status, (200, 204))
            else:
                self.seq[room] += 1
                seq = self.seq[room]
                t0 = time.perf_counter()
                text = f"bench {seq} {time.perf_counter_ns()}"
                async with http.post(path, json={"text": text}, timeout=timeout) as resp:
                    self.count(kind, resp.status, (201,))
                    if resp.status == 201:
                        self.publish_rtts.append((time.perf_counter() - t0) * 1000)
                        if room in self.accepted:
                            self.accepted[room].append(seq)
                        else:
                            message_id = (await resp.json())["message"]["id"]
                            self.mine.setdefault(room, []).append((http, message_id))
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors[f"{kind} {type(exc).__name__}"] += 1

    def count(self, kind: str, status: int, good: tuple[int, ...]) -> None:
        self.outcomes[f"{kind} {status}"] += 1
        if status not in good:
            self.errors[f"{kind} HTTP {status}"] += 1

    async def churn(self, cookie: str, rng: random.Random) -> None:
        while True:
            await self.churning.wait()
            room = rng.choice(self.home + self.turning)
            kind = rng.choice(("sse", "ws"))
            leave = rng.choice(("clean", "drop"))
            reads = rng.random() < 0.75
            hold = rng.uniform(1, 120)
            task = asyncio.create_task(
                churn_once(self.base, room, cookie, kind, leave, reads, hold)
            )
            self.churn_tasks.add(task)
            try:
                outcome = await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                outcome = "ended by a pause"
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                outcome = type(exc).__name__
            finally:
                self.churn_tasks.discard(task)
            self.outcomes[f"churn {kind} {outcome}"] += 1
            if outcome not in ("200", "101", "ended by a pause"):
                self.errors[f"churn {outcome}"] += 1
                await asyncio.sleep(rng.uniform(0.5, 2))

    async def turn_rooms(self) -> None:
        """Every ROTATE_EVERY_S, one turning room goes idle and a new one appears."""
        while True:
            await asyncio.sleep(ROTATE_EVERY_S)
            if self.phase == "churn":
                idle = self.turning.pop(0)
                self.mine.pop(idle, None)
                self.turning.append(f"soak-t{self.created}")
                self.created += 1

    async def drop_some(self) -> None:
        """Every DROP_EVERY_S, a few steady streams are dropped: they resume by id."""
        while True:
            await asyncio.sleep(DROP_EVERY_S)
            if self.phase != "churn":
                continue
            for sub in self.rng.sample(self.steady, max(1, int(len(self.steady) * DROP_SHARE))):
                stream = sub.stream
                if stream is not None and stream.transport is not None:
                    stream.transport.abort()

    # -- readings ------------------------------------------------------------------

    def workers(self) -> set[str]:
        return {str(pid) for pid in serving_workers(self.target.main_pids[0])}

    async def sample(self, http: aiohttp.ClientSession, redis: aioredis.Redis) -> None:
        errors, self.errors = self.errors, Counter()
        rtts, self.publish_rtts = sorted(self.publish_rtts), array.array("d")
        delivered = sorted(self.recorder.latencies)
        self.recorder.latencies = array.array("d")
        sample: dict[str, Any] = {
            "t": self.now(),
            "phase": self.phase,
            "publish_p50_ms": round(percentile(rtts, 50), 2) if rtts else None,
            "publish_p99_ms": round(percentile(rtts, 99), 2) if rtts else None,
            "delivery_p50_ms": round(percentile(delivered, 50), 2) if delivered else None,
            "delivery_p99_ms": round(percentile(delivered, 99), 2) if delivered else None,
            "deliveries": len(delivered),
            "churning": len(self.churn_tasks),
            "steady_open": sum(
                1
                for s in self.steady
                if s.stream is not None and s.stream.opened.done() and not s.stream.closed.done()
            ),
        }
        try:
            async with http.get("/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                gauges = worker_gauges(await resp.text())
            alive = self.workers()
            sample["workers"] = {
                pid: {
                    "rss": gauges["chat_worker_rss_bytes"].get(pid),
                    "fds": gauges["chat_worker_open_fds"].get(pid),
                    "tasks": gauges["chat_worker_tasks"].get(pid),
                }
                for pid in sorted(alive & set(gauges["chat_worker_rss_bytes"]))
            }
            sample["connections"] = sum(gauges["chat_connections"].values())
        except (TimeoutError, aiohttp.ClientError) as exc:
            errors[f"metrics {type(exc).__name__}"] += 1
        try:
            info = await redis.info("memory")
            sample["redis_used_memory"] = info["used_memory"]
            found = [k.decode() async for k in redis.scan_iter(count=1000)]
            sample["keys"] = count_kinds(found)
            pattern = chat_keys.stream_key("*")
            streams = [k for k in found if fnmatch.fnmatchcase(k, pattern)]
            async with redis.pipeline(transaction=False) as pipe:
                for key in streams:
                    pipe.xlen(key)
                sample["stream_entries"] = sum(await pipe.execute())
        except (OSError, aioredis.RedisError) as exc:
            errors[f"redis reading {type(exc).__name__}"] += 1
        sample["errors"] = dict(errors)
        self.samples.append(sample)

    async def sampler(self, redis: aioredis.Redis) -> None:
        async with aiohttp.ClientSession(self.base) as http:
            while True:
                await self.sample(http, redis)
                await asyncio.sleep(self.opts.sample_every)

    # -- faults and pauses ---------------------------------------------------------

    async def new_workers(self, old: set[str], within_s: float = 30) -> None:
        """Until ``workers`` processes serve and none of ``old`` is among them."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            now = self.workers()
            if len(now) >= self.opts.workers and not now & old:
                return
            await asyncio.sleep(0.2)
        self.errors["fault: workers not back in time"] += 1

    async def fault(self, kind: str) -> None:
        if kind == "reload":
            old = self.workers()
            self.event("reload", "SIGHUP")
            os.kill(self.target.main_pids[0], signal.SIGHUP)
            await self.new_workers(old)
        elif kind == "kill":
            victim = min(self.workers(), key=int)
            self.event("kill", f"SIGKILL worker pid {victim}")
            os.kill(int(victim), signal.SIGKILL)
            await self.new_workers({victim})
        elif kind == "redis":
            redis = self.ctx.redis
            self.event("redis", f"SIGKILL redis-server pid {redis.pid}, started again")
            assert redis.proc is not None
            redis.proc.kill()
            await asyncio.to_thread(redis.proc.wait)
            await asyncio.to_thread(redis.start)

    async def pause(self, length: float, redis: aioredis.Redis, *, last: bool) -> None:
        start = self.now()
        self.phase = "pause"
        self.churning.clear()
        for task in list(self.churn_tasks):
            task.cancel()
        self.event("pause", f"up to {length:.0f} s")
        reading, settled = await settle(
            self.base, redis, len(self.steady), self.opts.workers, within_s=length
        )
        holds = len(self.home) + len(self.turning)
        self.pauses.append(
            {
                "from_t": start,
                "t": self.now(),
                "settled": settled,
                "rooms_created": self.created,
                # Beside the first reading's: which workers hold a room depends
                # on where the kernel put its streams; typing marks live 2 s.
                "key_slack": {
                    "room holds": holds * (self.opts.workers - 1),
                    "typing": PUBLISHERS,
                },
                "reading": {
                    "tasks": dict(reading.tasks),
                    "fds": dict(reading.fds),
                    "rss": dict(reading.rss_bytes),
                    "connections": reading.connections,
                    "keys": dict(reading.keys),
                },
            }
        )
        self.ctx.progress.note(
            f"soak {self.now():.0f} s: {'settled' if settled else 'NOT settled'}: "
            f"{reading.describe()}"
        )
        if not last:
            self.phase = "churn"
            self.churning.set()

    # -- the run -------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        duration = self.opts.duration
        redis = aioredis.Redis.from_url(self.ctx.redis.url)
        await self.start()
        self.ctx.progress.note(
            f"soak: {len(self.steady)} steady streams open, {len(self.cookies)} churning "
            f"visitors; {duration:g} s from now"
        )
        self.t0 = time.monotonic()
        rngs = [random.Random(self.rng.random()) for _ in self.cookies]
        background = [
            asyncio.create_task(c)
            for c in (
                self.publish(),
                self.turn_rooms(),
                self.drop_some(),
                self.sampler(redis),
                *(self.churn(cookie, rng) for cookie, rng in zip(self.cookies, rngs, strict=True)),
            )
        ]
        self.churning.set()
        try:
            length = soak_verdict.pause_length(duration)
            events = soak_verdict.schedule(duration)
            for i, (at, kind) in enumerate(events):
                await asyncio.sleep(max(0.0, at - (time.monotonic() - self.t0)))
                if kind == "pause":
                    await self.pause(length, redis, last=i == len(events) - 1)
                else:
                    await self.fault(kind)
            # (The last pause lasts until the end, sampled.)
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - self.t0)))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        lost = await self.drain()
        await self.close()
        await redis.aclose()
        return self.figures(lost)

    async def drain(self, within_s: float = 30) -> int:
        """Until every steady stream has every message its room accepted (or
        ``within_s`` passed); the number still missing."""
        deadline = time.monotonic() + within_s
        while True:
            lost = sum(
                1 for sub in self.steady for seq in self.accepted[sub.room] if not sub.received(seq)
            )
            if not lost or time.monotonic() > deadline:
                return lost
            await asyncio.sleep(0.5)

    def figures(self, lost: int) -> dict[str, Any]:
        log = ""
        with contextlib.suppress(OSError), open(self.target.log_path, errors="replace") as f:
            log = f.read()
        churned = sum(
            n
            for what, n in self.outcomes.items()
            if what.endswith((" 200", " 101")) and what.startswith("churn")
        )
        figures: dict[str, Any] = {
            "duration_s": self.opts.duration,
            "steady": len(self.steady),
            "churners": len(self.cookies),
            "rooms": self.opts.soak_rooms,
            "rooms_created": self.created,
            "published": self.outcomes["post 201"],
            "published_to_steady_rooms": sum(len(v) for v in self.accepted.values()),
            "churned": churned,
            "delivery": {
                "lost": lost,
                "duplicates": sum(s.duplicates for s in self.steady),
                "out_of_order": sum(s.out_of_order for s in self.steady),
                "reconnects": sum(s.reconnects for s in self.steady),
            },
            "tracebacks": log.count("Traceback"),
            "outcomes": dict(sorted(self.outcomes.items())),
            # A new room's stream, and its changes (edits, deletes).
            "key_slack_per_new_room": {"rooms": 2},
            "events": self.events,
            "pauses": self.pauses,
            "samples": self.samples,
        }
        figures.update(figures["delivery"])
        judged = soak_verdict.judge(figures)
        figures["verdict"] = judged
        figures["rss_percent_per_hour"] = soak_verdict.pause_rss_slope(self.pauses)
        figures["details"] = {"verdict": "FAIL" if judged["problems"] else "passed"}
        print(f"\nsoak verdict:\n{soak_verdict.verdict_text(judged)}", flush=True)
        return figures


async def run(target: Target, ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    return await Soak(target, ctx).run()
