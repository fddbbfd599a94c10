"""The webhook receiver of the ``chat-webhooks`` target, a process of its own.

    python -m benchmarks.hook_receiver --port PORT   (secret in BENCH_HOOK_SECRET)

An aiohttp app that answers every ``POST /hook`` 204 at once, in its own
process, so that its CPU is not counted as the server's. It checks each
event's ``Chat-Signature`` (HMAC-SHA256 of ``"<t>.<body>"``), counts events
by type and by ``id`` (at least once: a second copy is a duplicate), and
for each ``message.created`` of a benchmark message (``bench <seq>
<perf_counter_ns>``) keeps its sequence number and how long after the POST
that published it the event arrived (``perf_counter`` is the system's
monotonic clock, the load generator's too). ``GET /stats`` returns all that.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence

import uvloop
from aiohttp import web

SECRET_ENV = "BENCH_HOOK_SECRET"
TEXT_RE = re.compile(r"bench (\d+) (\d+)")
READY = "hook-receiver: serving http://{host}:{port}/hook (pid {pid})"


class Tally:
    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.events = 0
        self.by_type: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.duplicates = 0
        self.bad_signatures = 0
        self.unreadable = 0
        self.latency_ms: dict[int, float] = {}  # benchmark message seq -> ms after its POST

    def signed(self, header: str, body: bytes) -> bool:
        try:
            fields = dict(part.split("=", 1) for part in header.split(","))
            signed = fields["t"].encode() + b"." + body
        except (KeyError, ValueError):
            return False
        expected = hmac.new(self.secret, signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields.get("v1", ""))

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now_ns = time.perf_counter_ns()
        self.events += 1
        if not self.signed(request.headers.get("Chat-Signature", ""), body):
            self.bad_signatures += 1
        try:
            event = json.loads(body)
            kind, event_id, data = str(event["type"]), str(event["id"]), event["data"]
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return web.Response(status=204)
        if event_id in self.ids:
            self.duplicates += 1
            return web.Response(status=204)
        self.ids.add(event_id)
        self.by_type[kind] += 1
        text = data.get("text") if isinstance(data, dict) else None
        found = TEXT_RE.fullmatch(text) if kind == "message.created" and text else None
        if found:
            self.latency_ms[int(found.group(1))] = (now_ns - int(found.group(2))) / 1e6
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "events": self.events,
                "by_type": dict(self.by_type),
                "duplicates": self.duplicates,
                "bad_signatures": self.bad_signatures,
                "unreadable": self.unreadable,
                "latency_ms": [[seq, ms] for seq, ms in self.latency_ms.items()],
            }
        )


async def serve(host: str, port: int, secret: str) -> None:
    tally = Tally(secret)
    app = web.Application()
    app.router.add_post("/hook", tally.hook)
    app.router.add_get("/stats", tally.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    print(READY.format(host=host, port=port, pid=os.getpid()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hook_receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        parser.error(f"{SECRET_ENV} must hold the webhook secret")
    uvloop.run(serve(args.host, args.port, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
