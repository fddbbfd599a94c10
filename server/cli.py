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
import dataclasses
import functools
import logging
import multiprocessing
import multiprocessing.process
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp  # noqa: F401  (preloaded, so that forked workers need not import it)
import aiohttp_session  # noqa: F401
import aiohttp_sse  # noqa: F401
import aiotools
from redis.exceptions import RedisError

from . import __version__, logs, redisurl
from .config import LOG_FORMATS, LOG_LEVELS, LOOPS, Config, ConfigError, load
from .embedded import EmbeddedRedisError, embedded_redis
from .process import METRICS_DIR_ENV, STOP_SIGNALS, Shared, keeper, title, worker
from .supervisor import Action, Supervisor

if TYPE_CHECKING:  # imported at run time once its directory is set (see main)
    from .instance_metrics import InstanceMetrics

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
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text, or one JSON object a line [text]"
    )
    parser.add_argument("--loop", choices=LOOPS, help="event loop of the workers [uvloop]")
    parser.add_argument("--debug", action="store_true", default=None, help="asyncio debug mode")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return vars(parser.parse_args(argv))


SECRET_KEY = "chat:session_secret"


def session_secret(config: Config, redis_url: str) -> str:
    """The secret that signs session cookies.

    The configured one; else, on an external Redis, the one every instance
    on that Redis reads from it (the first instance to start sets it), so
    that a cookie from one instance is the same user on any other; else
    (the embedded Redis) one generated once and kept in the data directory.
    An instance that kept its own secret in its data directory offers that
    one, so that its users stay signed in when they start sharing.
    """
    if config.session_secret:
        return config.session_secret
    path = os.path.join(config.data_dir, "session_secret")
    kept = ""
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        kept = f.read().strip()
    if config.redis_url:
        return _shared_secret(redis_url, kept or secrets.token_urlsafe(32))
    if kept:
        return kept
    os.makedirs(config.data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def _shared_secret(redis_url: str, offer: str) -> str:
    """The secret kept in Redis, set to ``offer`` if there is none yet."""
    client = redisurl.blocking_client(
        redis_url, socket_connect_timeout=2, socket_timeout=2, decode_responses=True
    )
    try:
        pipe = client.pipeline(transaction=False)
        pipe.set(SECRET_KEY, offer, nx=True)
        pipe.get(SECRET_KEY)
        created, secret = pipe.execute()
    except RedisError as exc:
        raise RuntimeError(f"cannot read the session secret from Redis: {exc}") from None
    finally:
        client.close()
    if not secret:
        raise RuntimeError(f"the session secret in Redis ({SECRET_KEY}) is empty")
    if created:
        log.info("session secret generated and kept in Redis (%s)", SECRET_KEY)
    return str(secret)


def reach_redis(url: str, timeout: float) -> str:
    """Ping Redis with capped backoff until it answers or ``timeout`` passes.

    The URL the workers are to use: ``url``, or for a node of a Redis
    Cluster named by a plain ``redis://`` URL, its cluster form.
    """
    shown = redisurl.shown(url)
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return _probe(url)
        except redisurl.FAILURES as exc:
            if time.monotonic() + delay > deadline:
                raise RuntimeError(
                    f"cannot reach Redis at {shown} after {timeout:g} s: {exc}"
                ) from None
            log.warning("Redis at %s not reachable (%s); retrying", shown, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _probe(url: str) -> str:
    client = redisurl.blocking_client(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        if redisurl.kind_of(url) != "single" or url.startswith("unix:"):
            return url
        if not redisurl.is_cluster_node(client):
            return url
    finally:
        client.close()
    try:
        found = redisurl.validate(redisurl.cluster_url(url))
    except redisurl.BadRedisURL as exc:
        raise RuntimeError(str(exc)) from None
    log.info("Redis at %s is a cluster node: using the cluster", redisurl.shown(url))
    return found


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket all workers accept on; created once, so reloads refuse nothing."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def loop_runner(config: Config) -> Callable[[Coroutine[Any, Any, None]], None]:
    if config.loop == "uvloop":
        import uvloop  # noqa: PLC0415  (only where it is used)

        run: Callable[..., None] = uvloop.run
    else:
        run = asyncio.run
    return functools.partial(run, debug=config.debug)


def serve(
    config: Config,
    redis_url: str,
    reload_config: Callable[[], Config],
    metrics: InstanceMetrics,
) -> None:
    """Run generations of workers on one listening socket until a stop signal.

    A reload (SIGHUP) ends one generation and starts the next with the new
    settings; the socket stays open in between, so clients wait rather than
    being refused. Every generation writes its metrics to ``metrics``' directory.
    """
    sock = bind(config.host, config.port, config.backlog)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    secret = session_secret(config, redis_url)
    generation = 0

    def on_ready(config: Config) -> None:
        if generation == 0:
            print(
                f"chat-server: serving {url} with {config.workers} "
                f"worker{'s' if config.workers != 1 else ''} (pid {os.getpid()})",
                flush=True,
            )
        else:
            log.info("reloaded: %d workers ready", config.workers)

    # Signals are handled by the supervisor while a generation runs; between
    # two generations they wait, blocked, instead of killing the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    deaths: dict[int, list[float]] = {}
    restarts = 0
    try:
        while True:
            shared = Shared(
                config,
                redis_url,
                secret,
                sock,
                os.getpid(),
                write_fd,
                generation,
                metrics_dir=metrics.directory,
            )
            runner = loop_runner(config)
            supervisor = Supervisor(
                shared, read_fd, runner, reload_config, on_ready, deaths, metrics
            )
            aiotools.start_server(
                worker,
                main_ctxmgr=aiotools.main_context(supervisor.main_context),
                num_workers=config.workers,
                extra_procs=(keeper,),
                args=(shared,),
                stop_signals=STOP_SIGNALS,
                wait_timeout=config.shutdown_timeout_s * 2 + 5,
                runner=runner,
                # A worker that fails to start or stop is replaced by the
                # supervisor; aiotools would instead SIGINT the whole process
                # group, and so stop the server (and whatever shares its group).
                ignore_child_interrupts=True,
            )
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            _forget_reaped_children()
            if supervisor.action is Action.STOP:
                return
            if supervisor.action is Action.RESTART:
                # Back off only when workers fail before they ever serve.
                restarts = 0 if supervisor.ever_ready else restarts + 1
                delay = min(5.0, 0.25 * 2**restarts) if restarts else 0.0
                log.error("all workers are gone; starting new ones in %.1f s", delay)
                if _wait_blocked(delay):
                    with contextlib.suppress(ConfigError):
                        supervisor.next_config = reload_config()
            else:
                restarts = 0
            if supervisor.next_config is not None:
                config = _keep_bound_settings(config, supervisor.next_config)
                logs.configure(config.log_level, config.log_format)
            generation += 1
    finally:
        sock.close()
        os.close(read_fd)
        os.close(write_fd)


def _wait_blocked(delay: float) -> bool:
    """Sleep with the stop signals blocked; stop at once if one arrives.

    True if a SIGHUP came meanwhile: the settings are to be read again.
    """
    if delay <= 0:
        return False
    received = signal.sigtimedwait(STOP_SIGNALS, delay)
    if received is not None and received.si_signo != signal.SIGHUP:
        raise SystemExit(0)
    return received is not None


def _forget_reaped_children() -> None:
    """Release what multiprocessing keeps for workers that aiotools has reaped.

    aiotools waits for its workers through a pidfd and never joins their
    ``multiprocessing.Process``: each would keep two pipe descriptors open
    for the life of the main process, two more with every reload.
    """
    for process in list(multiprocessing.process._children):  # type: ignore[attr-defined]
        pid = process.pid
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            continue  # still ours to reap: alive, or a zombie someone will wait for
        except ChildProcessError:
            pass  # already reaped
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        finalizer = getattr(getattr(process, "_popen", None), "finalizer", None)
        if finalizer is not None:
            finalizer()


def _keep_bound_settings(old: Config, new: Config) -> Config:
    """Settings that only a restart can change keep their old values, with a warning."""
    kept = {}
    for key in ("host", "port", "redis_url", "data_dir", "session_secret", "redis_maxmemory"):
        if getattr(new, key) != getattr(old, key):
            log.warning("reload: %s changed; it takes effect only after a restart", key)
            kept[key] = getattr(old, key)
    return dataclasses.replace(new, **kept)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(parse_args(argv))
    except (UsageError, ConfigError) as exc:
        print(f"chat-server: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    title("main")
    logs.configure(config.log_level, config.log_format)
    # Until the workers run, a stop signal unwinds (stopping the embedded
    # Redis on the way) and there is nothing to reload.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with contextlib.ExitStack() as stack:
            directory = stack.enter_context(metrics_directory())
            # Only now: prometheus_client picks file-backed values on import
            # when the directory is set (see server.instance_metrics).
            from .instance_metrics import InstanceMetrics  # noqa: PLC0415

            metrics = InstanceMetrics(directory)
            redis_url = config.redis_url
            if not redis_url:
                redis_url = stack.enter_context(
                    embedded_redis(config.data_dir, maxmemory=config.redis_maxmemory)
                )
            redis_url = reach_redis(redis_url, config.redis_wait_s)
            flags = parse_args(argv)
            serve(config, redis_url, lambda: load(flags), metrics)
    except (EmbeddedRedisError, RuntimeError, OSError) as exc:
        print(f"chat-server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh directory of this instance's own, where all its processes write
    their metrics; removed at exit.

    Named in ``PROMETHEUS_MULTIPROC_DIR`` before anything imports
    prometheus_client, and before any worker is forked (they inherit it).
    Private, so that another instance on this machine never adds to ours.
    """
    path = tempfile.mkdtemp(prefix="chat-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
