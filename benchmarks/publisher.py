"""Publishing on a fixed schedule, over HTTP POST, like a user of the chat."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from .clients import TEXT_PREFIX
from .targets import BenchError


@dataclasses.dataclass
class Window:
    """One stretch of publishing: what was sent, what was accepted, how it went."""

    first_seq: int
    total: int
    rooms: dict[int, str] = dataclasses.field(default_factory=dict)  # seq -> room
    accepted: list[int] = dataclasses.field(default_factory=list)
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    round_trips: array.array[float] = dataclasses.field(default_factory=lambda: array.array("d"))
    lags: array.array[float] = dataclasses.field(default_factory=lambda: array.array("d"))
    started: int = 0  # messages handed to a sender
    start_ns: int = 0
    end_ns: int = 0


class Publisher:
    """Message ``i`` is due at ``start + i / rate``.

    A scheduler queues each message when it is due, and ``senders`` tasks,
    each with its own keep-alive connection (and session cookie), POST them.
    With ``credentials`` (user id, token), sender ``i`` signs in as the
    ``i``-th user instead: ``Authorization: Bearer`` on every POST and no
    cookie; its warm-up message must come back as that user's.
    A slow server does not slow the schedule down: messages wait in the queue,
    and how long they waited is reported as the schedule lag. The text of
    message ``seq`` is ``bench <seq> <perf_counter_ns when its POST started>``.
    """

    def __init__(
        self, base_url: str, senders: int, credentials: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.base_url = base_url
        self.n_senders = senders
        self.credentials = list(credentials)
        if self.credentials and len(self.credentials) < senders:
            raise ValueError(f"{senders} senders need as many credentials")
        self.next_seq = 0
        self.window: Window | None = None
        self._sessions: list[aiohttp.ClientSession] = []

    async def open(self, room: str) -> None:
        """Open the senders' sessions and post one warm-up message on each."""
        for i in range(self.n_senders):
            headers, jar = None, aiohttp.CookieJar(unsafe=True)
            if self.credentials:
                headers = {"Authorization": f"Bearer {self.credentials[i][1]}"}
                jar = aiohttp.DummyCookieJar()
            self._sessions.append(
                aiohttp.ClientSession(
                    self.base_url,
                    connector=aiohttp.TCPConnector(limit=1),
                    cookie_jar=jar,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                )
            )
        for i, session in enumerate(self._sessions):
            path = f"/api/rooms/{room}/messages"
            async with session.post(path, json={"text": f"warmup sender {i}"}) as resp:
                if resp.status != 201:
                    raise BenchError(f"warm-up POST answered {resp.status}: {await resp.text()}")
                if self.credentials:
                    self._check_author(i, await resp.json())

    def _check_author(self, i: int, answer: Any) -> None:
        """Sender ``i``'s warm-up message was posted as its token's user."""
        user_id = self.credentials[i][0]
        message = answer.get("message") if isinstance(answer, dict) else None
        author = message.get("user_id") if isinstance(message, dict) else None
        if author != user_id:
            raise BenchError(f"sender {i} posted as {author!r}, not as its token's {user_id!r}")

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()
        self._sessions = []

    async def run(self, rate: float, duration: float, room_of: Callable[[int], str]) -> Window:
        """Publish ``rate`` messages a second for ``duration`` seconds; ``room_of(seq)``
        names the room of each."""
        window = self.window = Window(self.next_seq, max(1, round(rate * duration)))
        self.next_seq += window.total
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        window.start_ns = time.perf_counter_ns()
        start = window.start_ns / 1e9

        async def schedule() -> None:
            for i in range(window.total):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait((window.first_seq + i, due))
            for _ in self._sessions:
                queue.put_nowait(None)

        async def send(session: aiohttp.ClientSession) -> None:
            while (job := await queue.get()) is not None:
                seq, due = job
                room = window.rooms[seq] = room_of(seq)
                window.started += 1
                sent_ns = time.perf_counter_ns()
                window.lags.append(max(0.0, sent_ns / 1e6 - due * 1e3))
                try:
                    async with session.post(
                        f"/api/rooms/{room}/messages",
                        json={"text": f"{TEXT_PREFIX}{seq} {sent_ns}"},
                    ) as resp:
                        await resp.read()
                        if resp.status == 201:
                            window.accepted.append(seq)
                        else:
                            window.failures[f"HTTP {resp.status}"] += 1
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    window.failures[type(exc).__name__] += 1
                window.round_trips.append((time.perf_counter_ns() - sent_ns) / 1e6)

        await asyncio.gather(schedule(), *(send(s) for s in self._sessions))
        window.end_ns = time.perf_counter_ns()
        return window
