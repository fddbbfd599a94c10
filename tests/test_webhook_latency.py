"""How soon a webhook event goes out when a room is busy: the deliverer of
:mod:`server.process.deliverer` in this process, with real Redis and a real
receiver.

A busy room is served again and again (each serve ends when the outbox is
empty, the next write starts another). The lease renewal runs beside the
serves; if it ever mistook a serve that had just ended for the current one,
it would cancel the new serve and leave its lease behind, and the room's
events would wait a whole lease (6 s). The renewal runs here every few
milliseconds instead of every 2 s, so that the overlap, rare at 2 s, comes
up many times in a short run.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiotools
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from server.common.config import Config
from server.common.webhook_metrics import WebhookMetrics
from server.process import deliverer as deliverer_module
from server.process.delivery import wake_ups
from server.store.dead_letters import DeadLetters
from server.store.keys import due_key_of, outbox_key
from server.store.outbox import OUTBOX_LUA, Outbox
from server.store.outbox_queue import OutboxQueue

from .webhook_receiver import SECRET, running_receiver

pytestmark = pytest.mark.timeout(60)

WRITE = OUTBOX_LUA + "\noutbox_write(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
# Longest wait from a write to its delivery: the wake-up (a PUBLISH) gathers
# writes for 50 ms, and the poll every 0.5 s finds what a wake-up missed.
MOST_S = 1.5


def write_events(redis_url: str, room: str, events: int) -> None:
    """Write ``events`` message events to ``room``'s outbox, one every 10 ms."""
    with sync_redis.Redis.from_url(redis_url) as client:
        write = client.register_script(WRITE)
        keys = [outbox_key(room), due_key_of(room)]
        for seq in range(events):
            data = json.dumps({"text": f"m{seq}", "room": room})
            write(keys=keys, args=[room, "message.created", data, time.time()])
            time.sleep(0.01)


async def test_events_of_a_busy_room_never_wait_for_a_lease(
    redis: aioredis.Redis,
    redis_url: str,
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deliverer_module, "RENEW_S", 0.003)
    room = "busy-room"
    events = 300
    async with running_receiver() as receiver:
        config = make_config(webhook_url=receiver.url, webhook_secret=SECRET)
        outbox = Outbox(redis, config.webhook_events)
        queue = OutboxQueue(redis, lease_ms=int(deliverer_module.LEASE_S * 1000))
        delivering = deliverer_module.Deliverer(
            config, queue, DeadLetters(redis, outbox), WebhookMetrics()
        )
        async with delivering.running():
            listening = asyncio.create_task(wake_ups(redis, delivering))
            try:
                # Written from a thread of its own, as a worker process would,
                # so that writes fall anywhere between the deliverer's steps.
                await asyncio.to_thread(write_events, redis_url, room, events)
                await receiver.wait_for(lambda r: len(r.accepted) >= events, timeout=20)
            finally:
                await aiotools.cancel_and_wait(listening)
    attempts = [a for a in receiver.attempts if 200 <= a.status < 300]
    texts = [a.event["data"]["text"] for a in attempts]
    assert texts == [f"m{seq}" for seq in range(events)]  # in order, each once
    waits = [a.at - a.event["created"] for a in attempts]
    assert max(waits) < MOST_S, f"an event waited {max(waits):.2f} s"


async def test_renewing_a_lease_that_ended_leaves_a_new_due_mark_alone(
    redis: aioredis.Redis,
) -> None:
    """The renewal reads the held rooms, then renews them: a serve may end in
    between, and a write make the room due again at once. The stale renewal
    reports the room lost and must not move the new mark a lease ahead."""
    queue = OutboxQueue(redis, lease_ms=6000)
    write = redis.register_script(WRITE)
    room = "renewed-late"
    keys = [outbox_key(room), due_key_of(room)]
    await write(keys=keys, args=[room, "message.created", '{"text": "one"}', time.time()])
    batch = await queue.take(room, "serve-1")
    assert batch is not None and len(batch) == 1
    held = {room: "serve-1"}  # what the renewal read
    assert await queue.done(room, "serve-1", batch, last=True) == []  # the serve ends
    await write(keys=keys, args=[room, "message.created", '{"text": "two"}', time.time()])
    assert await redis.zscore(due_key_of(room), room) == 0  # due at once

    assert await queue.renew(held) == [room]

    assert await redis.zscore(due_key_of(room), room) == 0
    rooms, _ = await queue.due.claim(10, 6000)
    assert room in rooms
