"""The log's format: lines of text for people, or one JSON object a line for log shippers."""

from __future__ import annotations

import datetime
import json
import logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(role)s %(name)s: %(message)s"

_role = "main"


def set_role(role: str) -> None:
    """What this process is, on each of its log lines: "main", "worker 0", "keeper"."""
    global _role  # noqa: PLW0603  (one per process, set once after the fork)
    _role = role


class _Role(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``pid``,
    ``role`` ("main", "worker 0", ...), ``logger``, ``message``, and
    ``exception`` when there is one."""

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
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at ``level`` in ``log_format`` (again after a reload)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, _Role) for f in handler.filters):
            handler.addFilter(_Role())
    root.setLevel(level.upper())
