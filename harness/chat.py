"""The chat server, ``python -m server``, as a real process group, as a user runs it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from server.core.ids import parse_id

from .processes import clean_env, group_alive, kill_group, start_ready

# The line the main process prints once every worker serves.
READY_RE = re.compile(r"chat-server: serving (http://\S+) with (\d+) workers? \(pid (\d+)\)")


def id_key(message_id: str | bytes) -> tuple[int, int]:
    """A message id as the pair of numbers it sorts by; ValueError if it is not an id."""
    text = message_id.decode() if isinstance(message_id, bytes) else message_id
    key = parse_id(text)
    if key is None:
        raise ValueError(f"not a message id: {text!r}")
    return key


@dataclass
class ChatServer:
    """``python -m server --port 0 --workers N`` in a process group of its own.

    ``env`` is laid over this process's environment without its ``CHAT_*``
    settings (see :meth:`environment`); ``cwd`` is a fresh temporary
    directory, removed by :meth:`kill`, unless given. The server's stderr
    goes to ``server.log`` there.
    """

    redis_url: str | None
    workers: int = 2
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    pid: int = 0  # the main process's, as the ready line says
    log_path: str = ""
    _own_cwd: bool = False

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "server", "--port", "0", "--workers", str(self.workers)]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        return cmd + self.args

    def default_env(self) -> dict[str, str]:
        """Settings under ``env``: none here."""
        return {}

    def environment(self) -> dict[str, str]:
        return clean_env(**(self.default_env() | self.env))

    def start(self, timeout: float = 20) -> ChatServer:
        """Start it and wait for its ready line; :class:`StartError` if it does not come."""
        if self.cwd is None:
            self.cwd = tempfile.mkdtemp(prefix="chat-server-")
            self._own_cwd = True
        self.log_path = os.path.join(self.cwd, "server.log")
        self.proc, match = start_ready(
            self.command(), self.environment(), self.cwd, self.log_path, READY_RE, timeout
        )
        self.url, self.pid = match.group(1), int(match.group(3))
        return self

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, signum: signal.Signals | int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def group_alive(self) -> bool:
        """Whether any process of the server's process group is still running."""
        assert self.proc is not None
        return group_alive(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL the whole process group (and remove ``cwd`` if it was made here)."""
        if self.proc is not None:
            kill_group(self.proc)
        if self._own_cwd and self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)
