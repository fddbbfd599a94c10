"""The log's format: lines of text for people, or one JSON object a line for log shippers."""

from __future__ import annotations

import datetime
import json
import logging
import re
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(role)s %(name)s: %(message)s"

_role = "main"

# What must not reach a log line as it is: C0 and C1 controls and DEL (a
# newline starts a forged line, an escape sequence rewrites the terminal),
# the Unicode line and paragraph separators (line breaks to some readers,
# Python's splitlines() among them) and the bidi embeddings, overrides and
# isolates (they reorder what is shown). A client's path, header or name
# reaches log lines; each of these is written as an escape instead.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """``text`` with each character of :data:`_UNSAFE` as an escape (``\\n``, ``\\x1b``)."""
    return _UNSAFE.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def set_role(role: str) -> None:
    """What this process is, on each of its log lines: "main", "worker 0", "keeper"."""
    global _role  # noqa: PLW0603  (one per process, set once after the fork)
    _role = role


class _Role(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, one line a record whatever its message holds.

    A traceback keeps its lines, which only the server's own failures log
    (what a client sends is answered, not logged with a traceback); other
    controls in it are escaped.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(escape(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(escape(line) for line in super().formatStack(stack_info).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``pid``,
    ``role`` ("main", "worker 0", ...), ``logger``, ``message``, and
    ``exception`` when there is one. ``json.dumps`` escapes C0 controls; the
    rest of :data:`_UNSAFE` (DEL, C1, separators, bidi) is escaped too, as
    ``\\uXXXX`` (they can only stand inside strings, so it stays JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "pid": record.process,
            "role": getattr(record, "role", _role),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _UNSAFE.sub(_json_escape, json.dumps(entry, ensure_ascii=False))


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level`` in ``log_format`` (again after a reload)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, _Role) for f in handler.filters):
            handler.addFilter(_Role())
    root.setLevel(level.upper())
