"""What the benchmark reads from the system: /proc for CPU and memory, and the machine."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import subprocess
from collections.abc import Iterable
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PACKAGES = ("aiohttp", "uvloop", "redis", "hiredis", "python-socketio", "python-engineio")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    alive: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            alive.add(int(entry))
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in alive:
            tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def title(pid: int) -> str:
    """What ``ps`` shows for a process: its command line, or the title it
    gave itself (``chat-server: worker 0``). OSError once it is gone."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def serving_workers(main: int) -> list[int]:
    """The chat server's worker processes under its main process ``main``, by
    their titles: not its keeper, webhook deliverer or embedded Redis (a
    fault that kills "a worker" must kill one that serves)."""
    found = []
    for pid in process_tree(main):
        with contextlib.suppress(OSError):  # (gone meanwhile)
            if title(pid).startswith("chat-server: worker "):
                found.append(pid)
    return found


def rss_bytes(pids: Iterable[int]) -> int:
    """The summed resident set size of the processes."""
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
        if (fields := _stat_fields(pid)) is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """User plus system CPU time of ``root`` and its live descendants, with
    what their children that have exited and were waited for used: a worker
    that a reload replaced still counts once it is gone."""
    ticks = 0
    for pid in process_tree(root):
        if (fields := _stat_fields(pid)) is not None:
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def raise_fd_limit(at_least: int = 0) -> int:
    """Raise this process's open-file limit to its hard limit (the servers it starts
    inherit it), or to ``at_least`` above that where this process may raise the
    hard limit too (root may); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if at_least > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (at_least, at_least))
            return at_least
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _version_of(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return "unknown"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


def _git(root: str, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        return ""


def machine_info(redis_binary: str, root: str) -> dict[str, Any]:
    """The machine and software a run measured, read when it runs."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    # Tracked files only: the results a run writes are not a change to the code.
    dirty = _git(
        root, "status", "--porcelain", "--untracked-files=no", "--", "server", "benchmarks"
    )
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis_server": _version_of(redis_binary),
        "packages": packages,
        "commit": _git(root, "rev-parse", "--short=10", "HEAD"),
        "uncommitted_changes": bool(dirty),
        "fd_limit": fd_limit(),
        "clock_ticks_per_s": CLOCK_TICKS,
    }
