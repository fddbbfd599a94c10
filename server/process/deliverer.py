"""Delivering webhook events: the work of the webhook deliverer process.

Events wait in their room's outbox in Redis (:mod:`server.store.outbox`),
written in the same step as the change they report. Each instance runs one
deliverer, a process of its own beside the workers
(:mod:`server.process.delivery`), so that POSTs and the scripts around them
never share a serving worker's event loop. It finds rooms due in the
sharded due sets, takes a room's lease, and POSTs the room's events one at
a time, oldest first: taken a batch at a time, removed from the outbox
together once the receiver took each with a 2xx
(:mod:`server.store.outbox_queue`). At most :data:`MAX_ROOMS` rooms at
once, so one event per room in flight and a bounded number per instance,
whatever the receiver does. The deliverers of several instances share the
rooms through the leases.

Why the order of a room holds: only the holder of a room's lease sends its
events, always the oldest first, and it moves on only once that one is
delivered (or buried as a dead letter); a failure lets go of the room until
its next try, and the event stays first. A deliverer that stalls past its
lease finds it gone at its next step (checked in each script, and before
each POST) and stops there.

Why nothing is lost: an event leaves the outbox only when delivered or
kept as a dead letter. A deliverer that dies (SIGKILL) leaves its rooms in
the due sets, a lease ahead: when the lease runs out its replacement, or
another instance's deliverer, takes them and sends the first event again
(at least once: the receiver dedupes by ``id``). A deliverer that stops
gracefully (a stop, a reload) hands its rooms back at once. A due mark lost
between a write and its mark (a cluster, a writer that died) is found again
by the sweep, once a minute.

Waking: :meth:`Deliverer.wake` (see :mod:`server.process.delivery`), else
every :data:`POLL_S`.

Retries: exponential backoff with jitter (:func:`server.core.webhook.retry_delay`)
until ``webhook_retry_for_s`` after the event (or its replay), then one
last try; if that fails, the event is a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp

from ..common.config import Config
from ..common.webhook_metrics import WebhookMetrics
from ..core.webhook import SIGNATURE_HEADER, WebhookEvent, retry_delay, signature
from ..core.wire import parse_json
from ..store import failures
from ..store.dead_letters import DeadLetters
from ..store.keys import DUE_SHARDS, name_key
from ..store.outbox_queue import BATCH, Entry, LeaseLost, OutboxQueue

log = logging.getLogger(__name__)

# Rooms delivered at once by the instance's deliverer, one event in flight each.
MAX_ROOMS = 64
DELIVERY_TIMEOUT_S = 10.0  # a receiver that has not answered by then failed
LEASE_S = 6.0  # how long a dead deliverer's rooms wait for another
RENEW_S = 2.0  # leases renewed, gauges updated
POLL_S = 0.5  # due sets read when idle (a room made due is published: looked at once)
# Woken by a write, wait this long first: the events of a burst then share
# one claim, one take and one drop (four round trips) instead of each
# paying them, for this much more delay before they are sent.
GATHER_S = 0.05
SWEEP_S = 60  # lost due marks looked for, by one deliverer of all
LAG_ROOMS = 1024  # rooms whose oldest event is remembered for the lag gauge
STOP_S = 2.0  # a stop waits this long to hand rooms back


class Deliverer:
    """One instance's share of delivering webhook events."""

    def __init__(
        self,
        config: Config,
        redis_queue: OutboxQueue,
        dead: DeadLetters,
        metrics: WebhookMetrics,
    ) -> None:
        self.url = config.webhook_url
        self.secret = config.webhook_secret
        self.retry_for_s = config.webhook_retry_for_s
        self.queue = redis_queue
        self.dead = dead
        self.metrics = metrics
        self._held: dict[str, str] = {}  # room -> the token of its lease
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        # Room -> (its oldest event's creation, until when that is known).
        self._oldest: dict[str, tuple[float, float]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._errors = 0

    def wake(self) -> None:
        """Events were written: look for due rooms now."""
        self._changed.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver until the block ends; then hand the rooms held back."""
        connector = aiohttp.TCPConnector(limit=MAX_ROOMS)
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            loops = [
                asyncio.create_task(self._find_rooms(), name="webhooks"),
                asyncio.create_task(self._keep_leases(), name="webhook leases"),
            ]
            try:
                yield
            finally:
                tasks = [*loops, *self._serving.values()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._hand_back()

    async def _hand_back(self) -> None:
        held, self._held = dict(self._held), {}
        try:
            async with asyncio.timeout(STOP_S):
                await self.queue.release(held)
        except (TimeoutError, *failures.FAILURES) as exc:
            log.warning("webhooks: could not hand back %d rooms (%s)", len(held), exc)

    async def _find_rooms(self) -> None:
        shard = random.randrange(DUE_SHARDS)
        pause = POLL_S
        while True:
            self._changed.clear()
            free = MAX_ROOMS - len(self._serving)
            found = False
            if free > 0:
                try:
                    rooms, more = await self.queue.due.claim(free, self.queue.lease_ms, shard)
                except failures.FAILURES as exc:
                    self._failed_redis(exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                pause = POLL_S
                shard = (shard + 1) % DUE_SHARDS
                # (A serve just ended may be in _serving still: its room is served anew.)
                new = [room for room in rooms if not self._is_serving(room)]
                for room in new[:free]:
                    task = asyncio.create_task(self._serve(room), name=f"webhooks {room}")
                    self._serving[room] = task
                    task.add_done_callback(functools.partial(self._done, room))
                found = more and bool(new)  # else every room due was found
                if new[free:]:
                    with contextlib.suppress(*failures.FAILURES):
                        await self.queue.due.due_now(new[free:])
            if found and len(self._serving) < MAX_ROOMS:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._changed.wait()
                    await asyncio.sleep(GATHER_S)

    def _is_serving(self, room: str) -> bool:
        return (task := self._serving.get(room)) is not None and not task.done()

    def _done(self, room: str, task: asyncio.Task[None]) -> None:
        if self._serving.get(room) is task:
            del self._serving[room]
        self._changed.set()

    async def _keep_leases(self) -> None:
        swept_at = 0.0
        while True:
            try:
                held = dict(self._held)
                for room in await self.queue.renew(held):
                    # (Unless that serve ended meanwhile, and another took the room.)
                    if self._held.get(room) == held[room]:
                        del self._held[room]
                        if task := self._serving.get(room):
                            task.cancel()  # another deliverer has it now
                if time.monotonic() - swept_at >= SWEEP_S:
                    swept_at = time.monotonic()
                    if found := await self.queue.due.sweep(SWEEP_S):
                        log.info("webhooks: %d rooms with events had lost their due mark", found)
                self.metrics.dead_letters(await self.dead.count())
            except failures.FAILURES as exc:
                self._failed_redis(exc)
            self.metrics.lag(self._lag())
            await asyncio.sleep(RENEW_S)

    def _failed_redis(self, exc: BaseException) -> None:
        self._errors += 1
        if self._errors == 1 or self._errors % 100 == 0:
            log.warning("webhooks: Redis failed (%s); trying again", exc)

    async def _serve(self, room: str) -> None:
        """Deliver the room's events, oldest first, until it is empty or one fails."""
        token = secrets.token_hex(8)
        try:
            batch = await self.queue.take(room, token)
            if batch is None:
                return
            self._held[room] = token
            while True:
                delivered = await self._deliver(room, token, batch)
                if delivered is None:
                    return  # one failed: the room comes due again at its next try
                # Fewer than a batch: that was all the room had when taken.
                last = len(batch) < BATCH
                batch = await self.queue.done(room, token, delivered, last=last)
                if last and not batch:
                    self._oldest.pop(room, None)
                    return
        except LeaseLost:
            return
        except failures.FAILURES as exc:
            # The room comes due again when its lease runs out.
            self._failed_redis(exc)
        finally:
            if self._held.get(room) == token:
                del self._held[room]

    async def _deliver(self, room: str, token: str, batch: list[Entry]) -> list[Entry] | None:
        """Send events in order: those delivered (or buried), or None when
        one failed (retried later; those before it are dropped)."""
        delivered: list[Entry] = []
        for entry in batch:
            if self._held.get(room) != token:
                raise LeaseLost(room)  # another deliverer has it now
            self._oldest[room] = (entry.created, float("inf"))
            error = await self._send(entry)
            if error is None:
                self.metrics.delivery("ok")
                delivered.append(entry)
                continue
            self.metrics.delivery("failed")
            now = time.time()
            deadline = entry.since + self.retry_for_s
            if now >= deadline or error.startswith("malformed"):
                log.warning("webhooks: event %s is a dead letter: %s", entry.id, error)
                await self.dead.bury(entry, error)
                self.metrics.delivery("dead")
                delivered.append(entry)
                continue
            delay = max(0.05, min(retry_delay(entry.tries + 1), deadline - now))
            self._oldest[room] = (entry.created, now + delay + LEASE_S)
            await self.queue.failed(token, entry, delay, delivered)
            return None
        return delivered

    async def _send(self, entry: Entry) -> str | None:
        """POST one event: None when the receiver took it, else why not."""
        try:
            event = await self._event(entry)
        except (ValueError, TypeError, KeyError) as exc:
            return f"malformed event: {exc}"
        body = event.body()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self.secret, body, int(time.time())),
        }
        assert self._session is not None
        try:
            async with self._session.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return f"no answer within {DELIVERY_TIMEOUT_S:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def _event(self, entry: Entry) -> WebhookEvent:
        data = parse_json(entry.fields["data"])
        if not isinstance(data, dict):
            raise ValueError("data is not an object")
        if entry.kind.startswith("user."):
            user_id = str(data["user_id"])
            # The name now: the event keeps the user's id only.
            data["name"] = await self.queue.redis.get(name_key(user_id)) or user_id
        return WebhookEvent(entry.id, entry.kind, entry.created, data)

    def _lag(self) -> float:
        """Age of the oldest event this deliverer holds or saw fail, while that is current."""
        now = time.time()
        oldest = self._oldest
        for room in [room for room, (_, until) in oldest.items() if until < now]:
            del oldest[room]
        while len(oldest) > LAG_ROOMS:  # keep the oldest: they make the gauge
            del oldest[max(oldest, key=lambda room: oldest[room][0])]
        return max((now - created for created, _ in oldest.values()), default=0.0)
