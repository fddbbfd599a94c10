"""The log formats: one line a record, whatever a client put in its message."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from server.process.logs import JsonFormatter, TextFormatter

# What a client can put in a path (decoded), a header or a name.
FORGED = "2026-01-01 00:00:00,000 ERROR 1 main chat-server: forged"
HOSTILE = f"/x\n{FORGED}\r\x1b[2K\x00\x7f\x85\u2028\u2029\u202e\u2066"


def record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("our own failure")
        except RuntimeError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("server.test", logging.ERROR, __file__, 1, message, args, exc_info)
    made.role = "worker 0"
    return made


def test_the_text_format_escapes_controls_separators_and_bidi_in_one_line() -> None:
    line = TextFormatter().format(record("unhandled error in GET %s", HOSTILE))
    assert len(line.splitlines()) == 1
    assert line.endswith(
        f"unhandled error in GET /x\\n{FORGED}\\r\\x1b[2K\\x00\\x7f"
        "\\x85\\u2028\\u2029\\u202e\\u2066"
    )
    assert " ERROR " in line and " worker 0 server.test: unhandled error" in line


def test_the_text_format_keeps_a_tracebacks_lines() -> None:
    lines = TextFormatter().format(record("failed in %s", "/a\nb", exc=True)).split("\n")
    assert lines[0].endswith("failed in /a\\nb")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: our own failure"


@pytest.mark.parametrize("exc", [False, True])
def test_the_json_format_is_one_line_of_json_and_keeps_the_text(exc: bool) -> None:
    line = JsonFormatter().format(record("got %s", HOSTILE, exc=exc))
    assert len(line.splitlines()) == 1
    assert not any(c in line for c in "\x85\u2028\u2029\u202e\u2066")
    entry = json.loads(line)
    assert entry["message"] == "got " + HOSTILE
    assert ("exception" in entry) == exc
