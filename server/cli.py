"""``chat-server``: flags, the embedded Redis, the shared socket, and the workers.

The main process does everything that all workers share, once: it reads
and validates the settings, finds or starts Redis, loads the session secret,
binds the listening socket, and then hands over to ``aiotools.start_server``,
which forks the workers and forwards stop signals to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import aiotools
import redis
from redis.exceptions import RedisError

from . import __version__
from .config import LOG_LEVELS, LOOPS, Config, ConfigError, load
from .embedded import EmbeddedRedisError, embedded_redis

log = logging.getLogger("chat-server")

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad flags or settings: one line for the user, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = _Parser(prog="chat-server", description="Real-time chat server.")
    parser.add_argument("--host", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free port [8080]")
    parser.add_argument("--workers", type=int, help="worker processes [number of CPUs]")
    parser.add_argument(
        "--redis-url", help="redis://host:port/db; without it an embedded Redis is started"
    )
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="[info]")
    parser.add_argument("--loop", choices=LOOPS, help="event loop of the workers [uvloop]")
    parser.add_argument("--debug", action="store_true", default=None, help="asyncio debug mode")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return vars(parser.parse_args(argv))


def session_secret(config: Config) -> str:
    """The configured secret, or one generated once and kept in the data directory."""
    if config.session_secret:
        return config.session_secret
    path = os.path.join(config.data_dir, "session_secret")
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        secret = f.read().strip()
        if secret:
            return secret
    os.makedirs(config.data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def wait_for_redis(url: str, timeout: float) -> None:
    """Ping Redis with capped backoff until it answers or ``timeout`` passes."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    deadline = time.monotonic() + timeout
    delay = 0.1
    try:
        while True:
            try:
                client.ping()
                return
            except (RedisError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise RuntimeError(
                        f"cannot reach Redis at {url} after {timeout:g} s: {exc}"
                    ) from None
                log.warning("Redis at %s not reachable (%s); retrying", url, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
    finally:
        client.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket all workers accept on; created once, so reloads refuse nothing."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def loop_runner(config: Config) -> Callable[[Coroutine[Any, Any, None]], None]:
    if config.loop == "uvloop":
        import uvloop  # noqa: PLC0415  (only where it is used)

        run: Callable[..., None] = uvloop.run
    else:
        run = asyncio.run
    return functools.partial(run, debug=config.debug)


def serve(config: Config, redis_url: str) -> None:
    from .worker import Shared, worker  # noqa: PLC0415  (workers import the app, not the CLI)

    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    read_fd, write_fd = os.pipe()
    shared = Shared(
        config=config,
        redis_url=redis_url,
        session_secret=session_secret(config),
        sock=sock,
        ready_fd=write_fd,
    )

    @aiotools.main_context
    def main_context() -> Generator[None, signal.Signals, None]:
        loop = asyncio.get_running_loop()
        ready: set[int] = set()
        buffer = b""

        def on_ready() -> None:
            nonlocal buffer
            try:
                buffer += os.read(read_fd, 4096)
            except OSError:
                return
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                _, index, _pid = line.decode().split()
                ready.add(int(index))
            if len(ready) == config.workers:
                loop.remove_reader(read_fd)
                print(
                    f"chat-server: serving {url} with {config.workers} workers (pid {os.getpid()})",
                    flush=True,
                )

        loop.add_reader(read_fd, on_ready)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(read_fd)

    try:
        aiotools.start_server(
            worker,
            main_ctxmgr=main_context,
            num_workers=config.workers,
            args=(shared,),
            stop_signals=(signal.SIGINT, signal.SIGTERM),
            wait_timeout=config.shutdown_timeout_s * 2 + 5,
            runner=loop_runner(config),
        )
    finally:
        sock.close()
        os.close(read_fd)
        os.close(write_fd)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(parse_args(argv))
    except (UsageError, ConfigError) as exc:
        print(f"chat-server: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    try:
        with contextlib.ExitStack() as stack:
            redis_url = config.redis_url
            if not redis_url:
                redis_url = stack.enter_context(embedded_redis(config.data_dir))
            wait_for_redis(redis_url, config.redis_wait_s)
            serve(config, redis_url)
    except (EmbeddedRedisError, RuntimeError, OSError) as exc:
        print(f"chat-server: error: {exc}", file=sys.stderr)
        return 1
    return 0
