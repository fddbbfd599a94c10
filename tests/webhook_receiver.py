"""A webhook receiver for the tests: a real aiohttp server that records every
POST and answers as the test tells it (2xx, 500 until some time, or never)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SECRET = "whsec-test-0123456789abcdef0123456789"


@dataclass
class Attempt:
    """One POST as it arrived, and what it was answered."""

    body: bytes
    headers: dict[str, str]
    status: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def signed_with(self, secret: str) -> bool:
        """Checked as the README tells a receiver to (not with the server's own code)."""
        fields = dict(
            part.split("=", 1) for part in self.headers.get("Chat-Signature", "").split(",")
        )
        t = int(fields["t"])
        assert abs(time.time() - t) < 300
        signed = f"{t}.".encode() + self.body
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields.get("v1", ""))


@dataclass
class Receiver:
    url: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    fail_until: float = 0.0  # time.monotonic() before which it answers 500
    hang: bool = False  # accept and never answer
    hold_until: float = 0.0  # time.monotonic() until which answers wait
    fail_once: set[str] = field(default_factory=set)  # message texts answered 500 once
    in_flight: int = 0
    most_in_flight: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The events answered 2xx, in the order they came."""
        return [a.event for a in self.attempts if 200 <= a.status < 300]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._changed.set()
        try:
            if self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.hold_until - time.monotonic())
            status = 500 if time.monotonic() < self.fail_until else 204
            text = json.loads(body)["data"].get("text")
            if text in self.fail_once:
                self.fail_once.discard(text)
                status = 500
            self.attempts.append(Attempt(body, dict(request.headers), status, time.time()))
            self._changed.set()
            return web.Response(status=status)
        finally:
            self.in_flight -= 1

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
