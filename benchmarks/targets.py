"""The servers under test, and the private Redis they share.

The targets, each started with the same number of processes on the same
Redis (flushed between targets):

- ``chat``: the chat server, ``python -m server``;
- ``bare``: the ceiling, ``benchmarks/peer_bare.py``;
- ``socketio``: python-socketio on aiohttp with its Redis manager,
  ``benchmarks/peer_socketio.py`` (WebSocket only: it has no SSE);
- the variants of ``chat`` (``benchmarks/variants.py``, where the registry
  of every target is): the same server with one thing changed, each
  compared with ``chat`` in the same run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from harness.chat import ChatServer
from harness.processes import ROOT, StartError, clean_env, free_port, start_ready, stop_process
from harness.redis_servers import RedisProcess
from server.common import config as chat_config

from .clients import Endpoint
from .procfs import process_tree

START_TIMEOUT_S = 30.0

# The chat server's limits per session and per client address, raised because
# every client of the load generator comes from one address and most from one
# session. Only keys the server knows are set (an unknown key is an error);
# values are clamped to each key's allowed range.
CHAT_LIMITS: dict[str, float] = {
    "rate_limit_per_s": 1e6,
    "rate_limit_burst": 1e6,
    "streams_per_session": 1e6,
    "address_sessions_per_min": 1e9,
    "address_rate_limit_per_s": 1e9,
    "address_rate_limit_burst": 1e9,
    "address_streams": 1e9,
    "address_connections": 1e9,
    "address_rooms_per_min": 1e9,
}


class BenchError(Exception):
    """The benchmark could not run (a server did not start, clients could not connect)."""


BROWSER_PATH = "/api/rooms/{room}/messages"


@dataclasses.dataclass(frozen=True)
class Sender:
    """How one publishing sender posts: the path (``{room}`` filled in), the
    headers of every POST, what its JSON body holds beside the text, whether
    it keeps a session cookie, and whose its messages must be (checked on
    its warm-up message; None: anyone's)."""

    path: str = BROWSER_PATH
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cookies: bool = True
    user_id: str | None = None


def start_peer(
    cmd: list[str], env: dict[str, str], log_path: str, ready: re.Pattern[str]
) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start a peer server from the checkout and wait for its ready line."""
    try:
        return start_ready(cmd, env, ROOT, log_path, ready, START_TIMEOUT_S)
    except StartError as exc:
        raise BenchError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    workers: int = 2
    loop: str = "uvloop"
    backlog: int = 1024
    send_buffer: int | None = None  # the chat server's per-connection buffer; None: its default
    users: int = 1  # targets whose clients sign in: one user (a token) per stream, this many
    typing_every_s: float = 10.0  # targets whose streams' users type: each once every this long


class Target:
    """A server under test: how to start it, its processes, how to stop it."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    pid_header: ClassVar[str] = ""  # response header naming the process that serves a stream
    kinds: ClassVar[tuple[str, ...]] = ("sse", "ws")  # stream kinds it serves
    resumes: ClassVar[bool] = False  # takes a resume id on reconnect
    sessions: ClassVar[bool] = True  # gives its clients a session cookie
    # Its senders edit: every n-th request edits the sender's last message (0: none).
    edit_every: ClassVar[int] = 0
    # Its streams' users each say they are typing once every this many seconds (0: never).
    typing_every_s: float = 0.0

    def __init__(self, opts: ServerOptions, redis: RedisProcess, workdir: str) -> None:
        self.opts = opts
        self.redis = redis
        self.workdir = os.path.join(workdir, self.name)
        os.makedirs(self.workdir, exist_ok=True)
        self.log_path = os.path.join(self.workdir, "server.log")
        self.base_url = ""
        self.exit_codes: list[int | None] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.main_pids: list[int] = []

    def endpoint(self) -> Endpoint:
        host, _, port = self.base_url.removeprefix("http://").rpartition(":")
        return Endpoint(host, int(port), self.pid_header, self.resumes)

    def senders(self, n: int) -> list[Sender]:
        """How ``n`` publishing senders post: by default each as a visitor of its
        own (a session cookie), through the browsers' POST."""
        return [Sender() for _ in range(n)]

    async def sign_in_details(self, room: str) -> dict[str, Any]:
        """Evidence that the streams in ``room`` signed in (for a target whose clients do)."""
        return {}

    def before_publishing(self) -> None:
        """Called as a publishing window starts (a target's own counters start here)."""

    async def after_publishing(self, accepted: Sequence[int], quiet_s: float) -> dict[str, Any]:
        """Called once a window's deliveries drained, before the server's CPU is read:
        figures of the target's own about the messages ``accepted`` (waiting for
        work the server still owes them, until ``quiet_s`` s pass without progress)."""
        return {}

    def start(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process of the server (the main processes and their descendants)."""
        return [pid for main in self.main_pids for pid in process_tree(main)]

    def stop(self) -> None:
        self.exit_codes = [stop_process(p, timeout=15) for p in self.procs]
        self.procs = []
        self.main_pids = []

    def log_problems(self) -> list[str]:
        """Lines of the server's stderr that report an error."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        words = ("Traceback", "ERROR", "CRITICAL", "Exception", "Error:")
        return [line for line in lines if any(w in line for w in words)]

    def env(self) -> dict[str, str]:
        return clean_env()


def chat_limits_env() -> dict[str, str]:
    """``CHAT_*`` variables for the limits in ``CHAT_LIMITS`` that the server has."""
    env = {}
    for key, wanted in CHAT_LIMITS.items():
        if key not in chat_config.KEYS:
            continue
        kind, _, high = chat_config.number_range(key)
        value = wanted if high is None else min(wanted, high)
        env["CHAT_" + key.upper()] = str(int(value) if kind is int else value)
    return env


class ChatTarget(Target):
    name = "chat"
    description = "the chat server (python -m server)"
    pid_header = "X-Chat-Pid"
    resumes = True

    def settings(self) -> dict[str, str]:
        """The server's ``CHAT_*`` environment."""
        env = chat_limits_env()
        env.update(
            {
                "CHAT_LOG_LEVEL": "warning",
                "CHAT_SESSION_SECRET": "benchmark-secret",
                "CHAT_DATA_DIR": os.path.join(self.workdir, "chat-data"),
            }
        )
        if "backlog" in chat_config.KEYS:
            env["CHAT_BACKLOG"] = str(self.opts.backlog)
        if self.opts.send_buffer is not None:
            env["CHAT_SEND_BUFFER_MESSAGES"] = str(self.opts.send_buffer)
        return env

    def start(self) -> None:
        env = self.settings()
        server = ChatServer(
            self.redis.url, self.opts.workers, ["--loop", self.opts.loop], env, self.workdir
        )
        try:
            chat_config.load(environ=server.environment())
        except chat_config.ConfigError as exc:
            raise BenchError(f"the chat server would refuse its settings: {exc}") from None
        try:
            server.start(START_TIMEOUT_S)
        except StartError as exc:
            raise BenchError(str(exc)) from None
        assert server.proc is not None
        self.procs = [server.proc]
        self.base_url = server.url
        self.main_pids = [server.pid]


class BareTarget(Target):
    name = "bare"
    description = "bare aiohttp broadcaster (benchmarks/peer_bare.py)"
    pid_header = "X-Bare-Pid"
    sessions = False
    READY = re.compile(r"peer-bare: serving (http://\S+) with (\d+) workers \(pid (\d+)\)")

    def start(self) -> None:
        cmd = [sys.executable, "-m", "benchmarks.peer_bare", "--port", "0"]
        cmd += ["--workers", str(self.opts.workers), "--redis-url", self.redis.url]
        cmd += ["--loop", self.opts.loop, "--backlog", str(self.opts.backlog)]
        proc, match = start_peer(cmd, self.env(), self.log_path, self.READY)
        self.procs = [proc]
        self.base_url = match.group(1)
        self.main_pids = [int(match.group(3))]


class SocketioTarget(Target):
    name = "socketio"
    description = "python-socketio on aiohttp + AsyncRedisManager (benchmarks/peer_socketio.py)"
    pid_header = "X-Peer-Pid"
    kinds = ("eio",)
    READY = re.compile(r"peer-socketio: serving (http://\S+) \(pid (\d+)\)")

    def start(self) -> None:
        # One process per worker on one port (SO_REUSEPORT).
        cmd = [sys.executable, "-m", "benchmarks.peer_socketio", "--port", str(free_port())]
        cmd += ["--redis-url", self.redis.url, "--loop", self.opts.loop]
        cmd += ["--backlog", str(self.opts.backlog)]
        try:
            for _ in range(self.opts.workers):
                proc, match = start_peer(cmd, self.env(), self.log_path, self.READY)
                self.procs.append(proc)
                self.main_pids.append(int(match.group(2)))
                self.base_url = match.group(1)
        except BenchError:
            self.stop()
            raise


def stream_kinds(target: type[Target] | Target, transport: str, n: int) -> list[str] | None:
    """The kinds of ``n`` streams for a transport (``ws``, ``sse`` or ``mixed``: half
    each), or None when the target has no such transport. socket.io has no SSE: in a
    mixed run all its streams are WebSocket (socket.io's ``eio``)."""
    if "eio" in target.kinds:
        return None if transport == "sse" else ["eio"] * n
    if transport == "mixed":
        return ["sse"] * (n - n // 2) + ["ws"] * (n // 2)
    return [transport] * n
