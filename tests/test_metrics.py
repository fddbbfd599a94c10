"""``/metrics`` per instance, exact at scrape time: real processes, real Redis.

A known workload (30 messages, four subscribers spread over both workers)
must read the same from every scrape, whichever worker answers, and stay
so when a worker is killed and replaced, after a reload, under concurrent
scrapes, and beside another instance on the same Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.soak_load import WORKER_GAUGES, worker_gauges
from server.common.metrics import Metrics, render

from .support import Collector, ServerProcess, subscribe_on_worker, worker_pids

pytestmark = pytest.mark.processes

ROOM = "/api/rooms/general"
MESSAGES = 30
# One SSE and one WebSocket subscriber on each of the two workers.
PLACES = [("sse", "0"), ("ws", "0"), ("sse", "1"), ("ws", "1")]


def samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text, as ``name{label="value",...}`` (pid left out)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f'{key}="{value}"' for key, value in sorted(sample.labels.items()) if key != "pid"
            )
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def open_streams(sse: int, ws: int) -> dict[str, float]:
    return {'chat_connections{transport="sse"}': sse, 'chat_connections{transport="ws"}': ws}


def expected(**extra: float) -> dict[str, float]:
    """The counters after the workload (as many subscribers as PLACES)."""
    return {
        "chat_messages_published_total": MESSAGES,
        "chat_deliveries_total": MESSAGES * len(PLACES),
        "chat_publish_latency_seconds_count": MESSAGES,
        # Once per message per worker that has subscribers: both do.
        "chat_delivery_latency_seconds_count": MESSAGES * 2,
        "chat_slow_consumers_dropped_total": 0,
        **extra,
    }


async def scrape(http: aiohttp.ClientSession, headers: dict[str, str] | None = None) -> Any:
    async with http.get("/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        return resp.headers["X-Chat-Worker"], samples(await resp.text())


def assert_counts(found: dict[str, float], wanted: dict[str, float]) -> None:
    assert {name: found.get(name) for name in wanted} == wanted


async def assert_every_scrape(base: str, wanted: dict[str, float]) -> None:
    """Scrape on fresh connections until each worker answered three times; every
    answer holds ``wanted``."""
    answers: dict[str, int] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(base, connector=connector) as http, asyncio.timeout(20):
        while len(answers) < 2 or min(answers.values()) < 3:
            worker, found = await scrape(http)
            assert_counts(found, wanted)
            answers[worker] = answers.get(worker, 0) + 1


async def wait_replaced(base: str, old: dict[int, int], indices: list[int]) -> None:
    """Wait until a new process serves each of the worker ``indices``."""
    async with asyncio.timeout(15):
        while True:
            now = await worker_pids(base)
            if all(now.get(index) not in (None, old[index]) for index in indices):
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def workload(base: str) -> AsyncIterator[list[Collector]]:
    """Four subscribers (see PLACES), and 30 messages posted on fresh
    connections, all received; the subscribers stay open in the block."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(base, connector=connector) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        subs = [await subscribe_on_worker(stack, http, kind, worker) for kind, worker in PLACES]
        for i in range(MESSAGES):
            async with http.post(f"{ROOM}/messages", json={"text": f"m{i}"}) as resp:
                assert resp.status == 201, await resp.text()
        for sub in subs:
            await sub.wait_for(lambda c: len(c.messages) == MESSAGES)
        yield subs


async def test_every_scrape_of_an_instance_counts_its_workload_exactly(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with workload(server.url):
        await assert_every_scrape(server.url, expected(**open_streams(2, 2)))


async def test_counts_survive_a_killed_worker_and_its_connections_leave_the_gauges(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with workload(server.url) as subs:
        pids = await worker_pids(server.url)
        os.kill(pids[1], signal.SIGKILL)
        await wait_replaced(server.url, pids, [1])
        for sub in subs[2:]:  # worker 1's
            async with asyncio.timeout(5):
                await sub.closed.wait()
        # Worker 0's subscribers are still open; worker 1's went with it.
        wanted = expected(chat_worker_restarts_total=1, **open_streams(1, 1))
        await assert_every_scrape(server.url, wanted)


def metrics_directories(pid: int) -> list[str]:
    """The metrics directories of the instance whose main process is ``pid``."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"chat-metrics-{pid}-*"))


async def files_only_of(directory: str, pids: Iterable[int]) -> None:
    """Wait until the directory holds files of ``pids`` and archives only."""
    owners = {str(pid) for pid in pids} | {"archive"}
    async with asyncio.timeout(5):
        while True:
            files = [n for n in os.listdir(directory) if n.endswith(".db")]
            if {n.removesuffix(".db").rsplit("_", 1)[1] for n in files} <= owners:
                return
            await asyncio.sleep(0.05)


async def test_counts_survive_reloads_and_dead_workers_leave_no_files(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    assert server.proc is not None
    (directory,) = metrics_directories(server.proc.pid)
    async with workload(server.url):
        for _ in range(2):
            pids = await worker_pids(server.url)
            server.signal(signal.SIGHUP)
            await wait_replaced(server.url, pids, [0, 1])
    # The old workers' counts went to the archives; their files are gone.
    pids = await worker_pids(server.url)
    await files_only_of(directory, [server.proc.pid, *pids.values()])
    wanted = expected(chat_reloads_total=2, chat_worker_restarts_total=0, **open_streams(0, 0))
    await assert_every_scrape(server.url, wanted)


async def test_concurrent_scrapes_change_no_counter(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    async with workload(server.url):
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        workers = set()
        async with aiohttp.ClientSession(server.url, connector=connector) as http:
            for _ in range(3):
                answers = await asyncio.gather(*(scrape(http) for _ in range(40)))
                for worker, found in answers:
                    workers.add(worker)
                    assert_counts(found, expected())
        assert workers == {"0", "1"}


async def test_another_instance_on_the_same_redis_is_not_counted(
    start_server: Callable[..., ServerProcess],
) -> None:
    one = start_server(workers=2)
    two = start_server(workers=1)
    async with aiohttp.ClientSession(two.url) as http:
        for i in range(5):
            async with http.post(f"{ROOM}/messages", json={"text": f"other {i}"}) as resp:
                assert resp.status == 201
    async with workload(one.url):
        await assert_every_scrape(one.url, expected())
        async with aiohttp.ClientSession(two.url) as http:
            _, found = await scrape(http)
    # The other instance relays the same room to nobody: its own numbers only.
    assert_counts(found, {"chat_messages_published_total": 5, "chat_deliveries_total": 0})


async def test_a_metrics_token_guards_the_scrape_of_an_instance(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_METRICS_TOKEN": "t0ken"})
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/metrics") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        _, found = await scrape(http, {"Authorization": "Bearer t0ken"})
    assert found["chat_messages_published_total"] == 0


# -- in-process: the rendering ------------------------------------------------


async def test_each_worker_reports_its_tasks_descriptors_and_memory(
    start_server: Callable[..., ServerProcess], redis: Any
) -> None:
    server = start_server(workers=2, env={"CHAT_STREAMS_PER_SESSION": "100"})
    pids = {str(pid) for pid in (await worker_pids(server.url)).values()}
    scrapes = aiohttp.ClientSession(server.url)
    streams = aiohttp.ClientSession(
        server.url,
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )

    clients = [0]  # Redis' clients (the test's own among them): when idle, then the latest

    async def totals_until(done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        # Each worker samples its resources about once a second.
        gauges: dict[str, dict[str, float]] = {}
        try:
            async with asyncio.timeout(10):
                while True:
                    async with scrapes.get("/metrics") as resp:
                        gauges = worker_gauges(await resp.text())
                    clients.append(len(await redis.client_list()))
                    totals = {name: sum(gauges[name].values()) for name in WORKER_GAUGES}
                    if all(set(gauges[name]) == pids for name in WORKER_GAUGES) and done(totals):
                        return totals
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(
                f"the workers' gauges stayed at {gauges}; Redis clients {clients[0]} to "
                f"{clients[-1]}"
            ) from None

    async def settled_totals() -> dict[str, float]:
        # Once two readings a sample apart agree, the workers have sampled since.
        last = None
        async with asyncio.timeout(10):
            while True:
                totals = await totals_until(lambda totals: True)
                now = (totals["chat_worker_tasks"], totals["chat_worker_open_fds"])
                if now == last:
                    return totals
                last = now
                await asyncio.sleep(1.1)

    @contextlib.asynccontextmanager
    async def thirty_streams() -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(30):
                stream = await stack.enter_async_context(streams.get(f"{ROOM}/events"))
                assert stream.status == 200, await stream.text()
            yield
        async with asyncio.timeout(10):
            while (await scrape(scrapes))[1]['chat_connections{transport="sse"}']:
                await asyncio.sleep(0.1)

    async with scrapes, streams:
        async with streams.get("/api/session") as resp:
            assert resp.status == 200
        # Streams closing together grow each worker's Redis pool (a command
        # each, at once), which keeps its connections: grown here, once.
        async with thirty_streams():
            pass
        idle = await settled_totals()
        clients[:] = [len(await redis.client_list())]

        def grown() -> int:
            return max(0, clients[-1] - clients[0])

        # The listening socket, Redis, the metrics files...; and a Python process' memory.
        assert idle["chat_worker_open_fds"] >= 2 * 5
        assert idle["chat_worker_rss_bytes"] >= 2 * 10 * 2**20
        async with thirty_streams():
            # A stream holds a socket and a task or more in its worker.
            await totals_until(
                lambda t: (
                    t["chat_worker_open_fds"] >= idle["chat_worker_open_fds"] + 30
                    and t["chat_worker_tasks"] >= idle["chat_worker_tasks"] + 30
                )
            )
        # Back down once they closed; but for the Redis connections the
        # workers' pools may have opened meanwhile (streams closing together
        # need a command each at once), which they keep.
        await totals_until(
            lambda t: (
                t["chat_worker_open_fds"] <= idle["chat_worker_open_fds"] + 3 + grown()
                and t["chat_worker_tasks"] <= idle["chat_worker_tasks"] + 3
            )
        )


def test_render_without_a_directory_is_this_process_alone() -> None:
    metrics = Metrics(worker=3)
    metrics.published(0.002)
    metrics.dispatched(4, [0])  # stored at the epoch: a very late delivery
    metrics.delivered(5)
    for transport in ("ws", "sse", "sse"):
        metrics.connection_opened(transport)
    metrics.connection_closed("sse")
    metrics.rate_limited("messages")
    metrics.slow_consumer_dropped()
    for _ in range(2):
        metrics.redis_error()
    metrics.redis_reconnected()
    metrics.replayed(12)
    # The longest durations so far: a shorter one later changes nothing.
    for late_s, took_s, paused_s in ((0.2, 0.3, 0.05), (0.01, 0.1, 0.02)):
        metrics.loop_late(late_s, stalled=late_s > 0.1)
        metrics.heartbeat_took(took_s, slow=took_s > 0.1)
        metrics.gc_paused(paused_s)
    found = samples(render(metrics).decode())
    assert_counts(
        found,
        {
            "chat_messages_published_total": 1,
            "chat_deliveries_total": 4 + 5,
            'chat_publish_latency_seconds_bucket{le="0.0025"}': 1,
            'chat_delivery_latency_seconds_bucket{le="10.0"}': 0,
            'chat_delivery_latency_seconds_bucket{le="+Inf"}': 1,
            'chat_connections{transport="ws"}': 1,
            'chat_connections{transport="sse"}': 1,
            'chat_connections_opened_total{transport="ws"}': 1,
            'chat_connections_opened_total{transport="sse"}': 2,
            'chat_rate_limited_total{kind="messages"}': 1,
            "chat_slow_consumers_dropped_total": 1,
            "chat_redis_errors_total": 2,
            "chat_redis_reconnects_total": 1,
            "chat_replay_messages_sum": 12,
            'chat_loop_stalls_total{worker="3"}': 1,
            'chat_loop_stall_max_seconds{worker="3"}': 0.2,
            'chat_heartbeat_slow_total{worker="3"}': 1,
            'chat_heartbeat_max_seconds{worker="3"}': 0.3,
            'chat_gc_pause_max_seconds{worker="3"}': 0.05,
            'chat_worker_up{worker="3"}': 1,
        },
    )
    # What the worker reads back agrees with what it renders.
    assert dict(metrics.connections) == {"ws": 1, "sse": 1}
    assert metrics.value("chat_redis_errors_total") == 2
    assert metrics.loop_stall_max.seconds == 0.2


def test_a_directory_needs_prometheus_client_in_multiprocess_mode(tmp_path: Any) -> None:
    # This process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR:
    # its values are plain, and a directory would silently hold nothing.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        Metrics(directory=str(tmp_path))


def test_what_an_instance_killed_outright_leaves_is_removed_by_the_next(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server(workers=1)
    assert first.proc is not None
    left = metrics_directories(first.proc.pid)
    assert len(left) == 1
    first.kill()  # SIGKILL to the whole group: nothing is cleaned up
    assert os.path.isdir(left[0])
    second = start_server(workers=1)
    assert second.proc is not None
    assert not os.path.exists(left[0])
    (own,) = metrics_directories(second.proc.pid)
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert not os.path.exists(own)  # a clean stop removes its own
