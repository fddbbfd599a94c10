"""The short soak's moving parts: steady subscribers, publishers, churning
clients and faults (the churning client and the settled readings are
:mod:`benchmarks.soak_load`'s, judged by :mod:`benchmarks.soak_check`).

A fixed population takes part, so that everything a settled server keeps for
it is bounded: a session per steady subscriber, per publisher and per
churning loop, made once. Each round runs them all for ``round_s`` seconds,
with ``fault`` (a reload, a killed worker) half-way through; then churn and
publishing pause and the server is read once its numbers stop moving.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from benchmarks.soak_load import churn_once
from server.store.session_store import COOKIE_NAME

from .support import ResilientSubscriber, assert_in_order_once


@dataclass
class Population:
    base: str
    rooms: list[str]
    churners: int = 8
    per_second: float = 5.0  # messages per room
    seed: int = 1
    steady: list[ResilientSubscriber] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # one per churning loop
    accepted: dict[str, list[str]] = field(default_factory=dict)  # room -> ids answered 201
    outcomes: Counter[str] = field(default_factory=Counter)  # churn and publishing
    publishers: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def new_session(self, **kwargs: Any) -> tuple[aiohttp.ClientSession, str]:
        """A client with a chat session of its own, and the session's cookie."""
        jar = aiohttp.CookieJar(unsafe=True)
        session = aiohttp.ClientSession(self.base, cookie_jar=jar, **kwargs)
        self._sessions.append(session)
        async with session.get("/api/session") as resp:
            assert resp.status == 200, await resp.text()
            return session, resp.cookies[COOKIE_NAME].value

    async def start(self) -> None:
        for room in self.rooms:
            self.accepted[room] = []
            for kind in ("sse", "ws"):
                session, _ = await self.new_session()
                sub = ResilientSubscriber(session, f"/api/rooms/{room}", kind)
                self.steady.append(sub)
                sub.start()
        for room in self.rooms:
            fresh = aiohttp.TCPConnector(force_close=True)  # a connection per message
            self.publishers[room], _ = await self.new_session(connector=fresh)
        for _ in range(self.churners):
            self.cookies.append((await self.new_session())[1])
        for sub in self.steady:
            await sub.wait_for(lambda s: s.connections, timeout=10)

    async def close(self) -> None:
        for sub in self.steady:
            await sub.stop()
        for session in self._sessions:
            await session.close()

    # -- a round ----------------------------------------------------------------

    async def round(self, round_s: float, fault: Callable[[], Awaitable[None]] | None) -> None:
        """Churn and publish for ``round_s`` seconds, ``fault`` half-way."""
        stop = asyncio.Event()
        rng = random.Random(self.seed)  # (the same for every round: identical churn)
        workers = [
            *(self._publish(room, stop) for room in self.rooms),
            *(self._churn(cookie, random.Random(rng.random()), stop) for cookie in self.cookies),
        ]
        tasks = [asyncio.create_task(w) for w in workers]
        try:
            await asyncio.sleep(round_s / 2)
            if fault is not None:
                await fault()
            await asyncio.sleep(round_s / 2)
        finally:
            stop.set()
            async with asyncio.timeout(20):
                await asyncio.gather(*tasks)

    async def _publish(self, room: str, stop: asyncio.Event) -> None:
        session, interval, i = self.publishers[room], 1 / self.per_second, 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(
                    f"/api/rooms/{room}/messages",
                    json={"text": f"soak {i}"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    self.outcomes[f"post {resp.status}"] += 1
                    if resp.status == 201:
                        self.accepted[room].append((await resp.json())["message"]["id"])
            except (TimeoutError, aiohttp.ClientError):
                self.outcomes["post error"] += 1
            i += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _churn(self, cookie: str, rng: random.Random, stop: asyncio.Event) -> None:
        while not stop.is_set():
            room = rng.choice(self.rooms)
            kind = rng.choice(("sse", "ws"))
            leave = rng.choice(("clean", "drop"))
            reads = rng.random() < 0.75
            hold = rng.uniform(0.05, 1.0)
            try:
                outcome = await churn_once(self.base, room, cookie, kind, leave, reads, hold)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                # (A worker killed or reloaded while the request waited for its answer.)
                outcome = type(exc).__name__
            self.outcomes[f"{kind} {outcome}"] += 1

    # -- after a round ----------------------------------------------------------

    async def delivered_everything(self, timeout: float = 20) -> None:
        """Every steady subscriber has every message its room accepted, once, in order."""
        for sub in self.steady:
            room = sub.room_path.rsplit("/", 1)[1]
            accepted = self.accepted[room]
            if accepted:
                last = accepted[-1]

                def has_last(s: ResilientSubscriber, last: str = last) -> bool:
                    return last in s.ids

                await sub.wait_for(has_last, timeout=timeout)
            assert_in_order_once(sub.ids)
            missing = set(accepted) - set(sub.ids)
            assert not missing, (room, sub.kind, len(missing), sub.reconnect_reasons)
