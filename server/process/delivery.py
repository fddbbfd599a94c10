"""The webhook deliverer process: one per instance, beside the workers.

With a ``webhook_url``, the main process starts one more process with each
generation of workers, under the index after the last worker's
(:func:`server.process.watch.worker_context` tells them apart): it serves no
HTTP, and only delivers webhook events (:mod:`server.process.deliverer`),
so that the serving workers' event loops never wait behind a POST or the
scripts around it. Like a worker, it is started again when it dies, stopped
(handing its rooms back) and renewed with the settings on a reload, and its
metrics go to the instance's directory, where a scrape of any worker finds
them.

It wakes up when a write publishes a room that became due (on one Redis
server; see :mod:`server.store.outbox`); on a Redis Cluster nothing is
published, and the deliverer's look every half second finds new rooms.

Imported only inside that process, like :mod:`server.process.worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiotools
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..common.webhook_metrics import WebhookMetrics
from ..store import failures
from ..store.clients import redis_client
from ..store.dead_letters import DeadLetters
from ..store.keys import DUE_CHANNEL
from ..store.outbox import Outbox
from ..store.outbox_queue import OutboxQueue
from ..store.pubsub import retry_after
from .deliverer import LEASE_S, Deliverer
from .handoff import WorkerSetup, die_with_parent, report, title

log = logging.getLogger(__name__)

ROLE = "webhook deliverer"
# Its niceness: when the CPU is short, the serving workers come first (a
# webhook may wait some milliseconds; a publish or a delivery should not).
NICENESS = 5


@aiotools.server_context
async def deliverer(
    loop: asyncio.AbstractEventLoop, pidx: int, args: Sequence[Any]
) -> AsyncGenerator[None, signal.Signals]:
    """The deliverer process, in aiotools' shape: open Redis, deliver until a
    stop signal, hand the rooms held back."""
    setup: WorkerSetup = args[0]
    os.nice(NICENESS)  # (before its title: a process named so runs at it)
    title(ROLE)
    die_with_parent(parent=setup.main_pid)
    report(setup, "started", pidx)
    config = setup.config
    async with redis_client(setup.redis_url) as redis:
        outbox = Outbox(redis, config.webhook_events)
        queue = OutboxQueue(redis, lease_ms=int(LEASE_S * 1000))
        metrics = WebhookMetrics(setup.metrics_dir or None)
        delivering = Deliverer(config, queue, DeadLetters(redis, outbox), metrics)
        async with delivering.running():
            clustered = isinstance(redis, RedisCluster)
            listening = None if clustered else asyncio.create_task(wake_ups(redis, delivering))
            report(setup, "delivering", pidx)
            try:
                yield
            finally:
                if listening is not None:
                    await aiotools.cancel_and_wait(listening)


async def wake_ups(redis: aioredis.Redis, delivering: Deliverer) -> None:
    """Wake the deliverer whenever a room is published as due, and once after
    each (re)subscription, for what was published meanwhile."""
    errors = 0
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(DUE_CHANNEL)
                errors = 0
                delivering.wake()
                async for _ in pubsub.listen():
                    delivering.wake()
        except failures.FAILURES as exc:
            if not errors:
                log.warning("webhooks: lost the wake-ups (%s); subscribing again", exc)
        errors += 1
        await asyncio.sleep(retry_after(errors))
