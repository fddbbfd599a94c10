"""``chat-server``: flags, settings, Redis, the session secret; then the supervisor.

The main process does everything that all workers share, once: it reads
and validates the settings, finds or starts Redis (finds out whether it
is a cluster, and checks that it has what the server needs), loads the
session secret, and hands over to
:class:`server.process.supervisor.Supervisor`, which binds the listening socket
and runs generations of workers until a stop signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp  # noqa: F401  (preloaded, so that forked workers need not import it)
import aiohttp_session  # noqa: F401
import aiohttp_sse  # noqa: F401
from redis.exceptions import RedisError

from .. import __version__
from ..common import redisurl
from ..common.config import LOG_FORMATS, LOG_LEVELS, LOOPS, Config, ConfigError, load
from ..store import connect, failures
from . import logs, redis_check, token_command, webhooks_command
from .embedded import EmbeddedRedisError, embedded_redis
from .handoff import METRICS_DIR_ENV, Runner, title
from .supervisor import Supervisor

log = logging.getLogger("chat-server")

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad flags or settings: one line for the user, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = _Parser(
        prog="chat-server",
        description="Real-time chat server.",
        epilog=(
            "chat-server token --help: a sign-in token for development; "
            "chat-server webhooks --help: webhook dead letters"
        ),
    )
    parser.add_argument("--host", help="address to listen on [127.0.0.1]")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free port [8080]")
    parser.add_argument("--workers", type=int, help="worker processes [number of CPUs]")
    parser.add_argument(
        "--redis-url", help="redis://host:port/db; without it an embedded Redis is started"
    )
    parser.add_argument("--config", help="TOML config file")
    # Any case, as in the environment and the config file.
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="[info]")
    parser.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="text, or one JSON object a line [text]",
    )
    parser.add_argument(
        "--loop", type=str.lower, choices=LOOPS, help="event loop of the workers [uvloop]"
    )
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
    client = connect.blocking_client(
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
    """Reach Redis, with capped backoff until it answers or ``timeout`` passes,
    and check that it has what the server needs (:mod:`server.process.redis_check`).

    The URL the workers are to use: ``url``, or for a node of a Redis
    Cluster named by a plain ``redis://`` URL, its cluster form. A Redis
    that lacks something raises :class:`server.process.redis_check.UnfitRedis`
    (a RuntimeError) at once.
    """
    shown = redisurl.shown(url)
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return _probe(url)
        except failures.FAILURES as exc:
            if time.monotonic() + delay > deadline:
                raise RuntimeError(
                    f"cannot reach Redis at {shown} after {timeout:g} s: {exc}"
                ) from None
            log.warning("Redis at %s not reachable (%s); retrying", shown, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _probe(url: str) -> str:
    found = url
    if redisurl.kind_of(url) == "single" and not url.startswith("unix:"):
        client = connect.blocking_client(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            if connect.is_cluster_node(client):
                try:
                    found = redisurl.validate(redisurl.cluster_url(url))
                except redisurl.BadRedisURL as exc:
                    raise RuntimeError(str(exc)) from None
        finally:
            client.close()
    shown = redisurl.shown(url)
    what = redis_check.check(found, shown)
    if found != url:
        log.info("Redis at %s is a node of %s: using the cluster", shown, what)
    else:
        log.info("Redis at %s: %s", shown, what)
    return found


def loop_runner(config: Config) -> Runner:
    if config.loop == "uvloop":
        import uvloop  # noqa: PLC0415  (only where it is used)

        run: Callable[..., None] = uvloop.run
    else:
        run = asyncio.run
    return functools.partial(run, debug=config.debug)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "token":
        return token_command.main(argv[1:])
    if argv and argv[0] == "webhooks":
        return webhooks_command.main(argv[1:])
    try:
        flags = parse_args(argv)
        config = load(flags)
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
            # when the directory is set (see server.process.instance_metrics).
            from .instance_metrics import InstanceMetrics  # noqa: PLC0415

            metrics = InstanceMetrics(directory)
            redis_url = config.redis_url
            companions = []
            if not redis_url:
                embedded = stack.enter_context(
                    embedded_redis(config.data_dir, maxmemory=config.redis_maxmemory)
                )
                redis_url = embedded.url
                companions.append(embedded)
            redis_url = reach_redis(redis_url, config.redis_wait_s)
            Supervisor(
                config,
                redis_url=redis_url,
                session_secret=session_secret(config, redis_url),
                reload_config=lambda: load(flags),
                runner_for=loop_runner,
                metrics=metrics,
                companions=companions,
            ).run()
    except (EmbeddedRedisError, RuntimeError, OSError) as exc:
        print(f"chat-server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


METRICS_DIR_PREFIX = "chat-metrics-"


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh directory of this instance's own, where all its processes write
    their metrics; removed at exit.

    Named in ``PROMETHEUS_MULTIPROC_DIR`` before anything imports
    prometheus_client, and before any worker is forked (they inherit it).
    Private, so that another instance on this machine never adds to ours.
    Its name carries the main process' pid: what an instance that was
    killed outright left behind is removed when the next one starts.
    """
    _remove_abandoned_metrics()
    path = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
    os.environ[METRICS_DIR_ENV] = path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_abandoned_metrics() -> None:
    """Remove this user's metrics directories whose instance is gone."""
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            pid_text = entry.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
            if not (entry.name.startswith(METRICS_DIR_PREFIX) and pid_text.isdigit()):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                if not _alive(int(pid_text)):
                    shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
