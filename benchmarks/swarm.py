"""A process that holds idle streams open, for the idle scenario.

One process can hold only as many connections as its open-file limit allows
(20,000 on the machines this was written on, for the servers' and the load
generator's sockets together), so the idle scenario spreads its streams over
several of these. The parent writes one JSON line on stdin::

    {"endpoint": [host, port, pid_header, resumes], "room": "bench",
     "streams": [["ws", "127.0.0.2", "<token>"], ["sse", null, null], ...],
     "deflate": true, "concurrency": 50, "timeout": 300}

Each stream: its kind, the address it connects from (null: the default) and
the token it signs in with (null, or left out: anonymous). The process
prints ``progress <opened> <settled>`` lines while it connects, then ``done
<json>`` (how many opened, the errors of the others, what the server sent
them meanwhile), keeps the streams open until its stdin closes, then closes
them and exits. Meanwhile each line ``report <messages> <timeout>`` on stdin
asks what the benchmark's messages did: once every open stream has had
``messages`` of them (or none arrived for ``timeout`` s), it prints ``report
<json>`` (first copies, duplicates, each delivery's latency in ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from typing import Any

import uvloop

from .clients import Endpoint, Recorder, Subscriber, open_all, stop_all
from .procfs import raise_fd_limit


async def hold(spec: dict[str, Any]) -> None:
    endpoint = Endpoint(*spec["endpoint"])
    recorder = Recorder()
    subs = [
        Subscriber(
            kind,
            endpoint,
            spec["room"],
            recorder,
            source=source,
            deflate=spec["deflate"],
            token=token[0] if token else None,
        )
        for kind, source, *token in spec["streams"]
    ]

    async def report() -> None:
        while True:
            opened = sum(1 for s in subs if s.ready.is_set())
            settled = sum(1 for s in subs if s.settled.is_set())
            print(f"progress {opened} {settled}", flush=True)
            await asyncio.sleep(0.5)

    reporter = asyncio.create_task(report())
    live = await open_all(subs, spec["concurrency"], spec["timeout"], attempts=3)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    failed = [s for s in subs if not s.ready.is_set() or s.error]
    done = {
        "opened": len(live),
        "failed": len(failed),
        "errors": dict(Counter(s.error or "no answer in time" for s in failed)),
        "closed_meanwhile": sum(s.reconnects for s in subs),
        "other_events": recorder.other_events,
        "other_bytes": recorder.other_bytes,
        "per_process": dict(Counter(s.process for s in live)),
    }
    print("done " + json.dumps(done), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
        word, *args = line.decode().split()
        if word == "report":
            await delivered(recorder, len(live) * int(args[0]), float(args[1]))
            print("report " + json.dumps(deliveries(recorder)), flush=True)
    await stop_all(subs)  # (the parent closed stdin)


async def delivered(recorder: Recorder, expected: int, quiet_s: float) -> None:
    """Until ``expected`` first copies arrived, or none for ``quiet_s`` s."""
    last, quiet_since = -1, asyncio.get_running_loop().time()
    while recorder.first_copies < expected:
        now = asyncio.get_running_loop().time()
        if recorder.deliveries != last:
            last, quiet_since = recorder.deliveries, now
        elif now - quiet_since > quiet_s:
            return
        await asyncio.sleep(0.05)


def deliveries(recorder: Recorder) -> dict[str, Any]:
    return {
        "first_copies": recorder.first_copies,
        "duplicates": recorder.duplicates,
        "out_of_order": recorder.out_of_order,
        "latencies_ms": [round(ms, 2) for ms in recorder.latencies],
    }


def main() -> int:
    raise_fd_limit()
    spec = json.loads(sys.stdin.buffer.readline())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(hold(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
