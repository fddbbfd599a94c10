"""Children in process groups of their own: started, read, stopped, killed."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StartError(RuntimeError):
    """A child did not start: it exited, or did not say it was ready in time."""


def free_port() -> int:
    """A TCP port that nothing listens on now, on the loopback address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``CHAT_*`` setting, with the
    checkout first on ``PYTHONPATH``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, without blocking past ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def start_ready(
    cmd: list[str],
    env: dict[str, str],
    cwd: str,
    log_path: str,
    ready: re.Pattern[str],
    timeout: float,
) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start ``cmd`` in a process group of its own, its stderr appended to
    ``log_path``, and wait for the first line of its stdout to match ``ready``."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    line = read_line(proc, timeout)
    match = ready.search(line)
    if not match:
        kill_group(proc)
        raise StartError(f"{' '.join(cmd[:4])} did not start: {line!r}; see {log_path}")
    return proc, match


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group, reap the child, close its stdout."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL whatever its process group
    left behind. The exit code of the graceful stop, or None if it had to be killed."""
    code: int | None = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout)
    else:
        code = proc.returncode
    kill_group(proc)
    return code


def group_alive(pgid: int) -> bool:
    """Whether any process of a process group is still running (zombies not counted)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    out = subprocess.run(
        ["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True, check=False
    ).stdout.split()
    return any(not s.startswith("Z") for s in out)
