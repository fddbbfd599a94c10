"""Publishing over HTTP POST: on a fixed schedule, or as fast as the senders can."""

from __future__ import annotations

import array
import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from .clients import EDIT_PREFIX, ID_RE, TEXT_PREFIX
from .targets import BenchError, Sender


@dataclasses.dataclass
class Window:
    """One stretch of publishing: what was sent, what was accepted, how it went."""

    first_seq: int
    total: int  # messages due (0 when publishing as fast as possible)
    rooms: dict[int, str] = dataclasses.field(default_factory=dict)  # seq -> room
    accepted: list[int] = dataclasses.field(default_factory=list)  # new messages and edits
    edits: list[int] = dataclasses.field(default_factory=list)  # of those, the edits
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    round_trips: array.array[float] = dataclasses.field(default_factory=lambda: array.array("d"))
    lags: array.array[float] = dataclasses.field(default_factory=lambda: array.array("d"))
    started: int = 0  # messages handed to a sender
    start_ns: int = 0
    end_ns: int = 0


class Publisher:
    """Message ``i`` is due at ``start + i / rate``, or, without a rate, each
    sender posts its next message as soon as its last was answered.

    On a schedule, a scheduler queues each message when it is due, and the
    senders, each with its own keep-alive connection, POST them. Sender
    ``i`` posts as ``senders[i]`` says (by default, as a visitor with a
    session cookie of its own, like a browser); its warm-up message must
    come back as its user's when the spec names one.
    A slow server does not slow the schedule down: messages wait in the queue,
    and how long they waited is reported as the schedule lag. The text of
    message ``seq`` is ``bench <seq> <perf_counter_ns when its POST started>``.

    With ``edit_every`` n, every n-th request (``seq % n == n - 1``) is an
    edit instead of a new message, in the same schedule: the sender that
    takes it PATCHes the last message it posted (its author; the id from its
    201 answer, its warm-up message's at first) with the text ``bench-edit
    <seq> <perf_counter_ns>``. Every subscriber gets it once, as it gets a
    message, so it is counted as one (in ``accepted``, and also in ``edits``).
    """

    def __init__(self, base_url: str, senders: Sequence[Sender], edit_every: int = 0) -> None:
        self.base_url = base_url
        self.senders = list(senders)
        self.edit_every = edit_every
        self.next_seq = 0
        self.window: Window | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self._last_posted: list[tuple[str, str]] = []  # per sender: (room, id) of its last message

    async def open(self, room: str) -> None:
        """Open the senders' sessions and post one warm-up message on each."""
        for spec in self.senders:
            jar = aiohttp.CookieJar(unsafe=True) if spec.cookies else aiohttp.DummyCookieJar()
            self._sessions.append(
                aiohttp.ClientSession(
                    self.base_url,
                    connector=aiohttp.TCPConnector(limit=1),
                    cookie_jar=jar,
                    headers=dict(spec.headers),
                    timeout=aiohttp.ClientTimeout(total=30),
                )
            )
        for i, (spec, session) in enumerate(zip(self.senders, self._sessions, strict=True)):
            body = {**spec.body, "text": f"warmup sender {i}"}
            async with session.post(spec.path.format(room=room), json=body) as resp:
                if resp.status != 201:
                    raise BenchError(f"warm-up POST answered {resp.status}: {await resp.text()}")
                if spec.user_id is not None:
                    self._check_author(i, spec.user_id, await resp.json())
                if self.edit_every:  # (its first edit is of this message)
                    found = ID_RE.search(await resp.read())
                    if found is None:
                        raise BenchError(f"sender {i}'s warm-up answer has no message id")
                    self._last_posted.append((room, found.group(1).decode()))

    @staticmethod
    def _check_author(i: int, user_id: str, answer: Any) -> None:
        """Sender ``i``'s warm-up message was posted as its user."""
        message = answer.get("message") if isinstance(answer, dict) else None
        author = message.get("user_id") if isinstance(message, dict) else None
        if author != user_id:
            raise BenchError(f"sender {i} posted as {author!r}, not as its user {user_id!r}")

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()
        self._sessions = []
        self._last_posted = []

    async def _post(self, i: int, seq: int, room_of: Callable[[int], str], window: Window) -> None:
        """Sender ``i`` posts message ``seq`` (or edits its last one, when
        ``seq`` is an edit's), and the window counts how it went."""
        edit = self.edit_every > 0 and seq % self.edit_every == self.edit_every - 1
        spec, session = self.senders[i], self._sessions[i]
        if edit:
            room, message_id = self._last_posted[i]
            window.rooms[seq] = room
            method, path, ok = "PATCH", f"/api/rooms/{room}/messages/{message_id}", 200
            body, text = {}, f"{EDIT_PREFIX}{seq}"
        else:
            room = window.rooms[seq] = room_of(seq)
            method, path, ok = "POST", spec.path.format(room=room), 201
            body, text = dict(spec.body), f"{TEXT_PREFIX}{seq}"
        window.started += 1
        sent_ns = time.perf_counter_ns()
        try:
            async with session.request(
                method, path, json={**body, "text": f"{text} {sent_ns}"}
            ) as resp:
                answer = await resp.read()
                if resp.status == ok:
                    window.accepted.append(seq)
                    if edit:
                        window.edits.append(seq)
                    elif self.edit_every and (found := ID_RE.search(answer)):
                        self._last_posted[i] = (room, found.group(1).decode())
                else:
                    window.failures[f"{'PATCH ' if edit else ''}HTTP {resp.status}"] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            window.failures[type(exc).__name__] += 1
        window.round_trips.append((time.perf_counter_ns() - sent_ns) / 1e6)

    async def run(
        self, rate: float | None, duration: float, room_of: Callable[[int], str]
    ) -> Window:
        """Publish ``rate`` messages a second (None: as fast as the senders can)
        for ``duration`` seconds; ``room_of(seq)`` names the room of each."""
        if rate is None:
            return await self._flood(duration, room_of)
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

        async def send(i: int) -> None:
            while (job := await queue.get()) is not None:
                seq, due = job
                window.lags.append(max(0.0, time.perf_counter_ns() / 1e6 - due * 1e3))
                await self._post(i, seq, room_of, window)

        await asyncio.gather(schedule(), *(send(i) for i in range(len(self._sessions))))
        window.end_ns = time.perf_counter_ns()
        return window

    async def _flood(self, duration: float, room_of: Callable[[int], str]) -> Window:
        window = self.window = Window(self.next_seq, 0)
        window.start_ns = time.perf_counter_ns()
        end_ns = window.start_ns + int(duration * 1e9)

        async def send(i: int) -> None:
            while time.perf_counter_ns() < end_ns:
                seq, self.next_seq = self.next_seq, self.next_seq + 1
                await self._post(i, seq, room_of, window)

        await asyncio.gather(*(send(i) for i in range(len(self._sessions))))
        window.end_ns = time.perf_counter_ns()
        window.total = window.started
        return window
