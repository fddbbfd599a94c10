"""The chat on a primary watched by Redis Sentinel, through a failover: real
processes (a primary, a replica, a Sentinel, the server with two workers)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .support import (
    ResilientSubscriber,
    Sender,
    assert_in_order_once,
    running_server,
    sentinel_processes,
)

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


async def test_the_chat_follows_the_primary_sentinel_names_and_loses_no_answered_message() -> None:
    redis = sentinel_processes()
    try:
        redis.start()
        with running_server(redis_url=redis.url, workers=2) as server:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(server.url, cookie_jar=jar) as http:
                subscribers = [
                    ResilientSubscriber(http, "/api/rooms/ha", kind) for kind in ("sse", "ws")
                ]
                for subscriber in subscribers:
                    subscriber.start()
                sender = Sender(server.url, "/api/rooms/ha", per_second=15)
                try:
                    for subscriber in subscribers:
                        await subscriber.wait_for(lambda s: s.connections)
                    sender.start()
                    await asyncio.sleep(1.0)
                    redis.kill(redis.primary)
                    redis.wait_primary(redis.replica)  # the Sentinel promoted the replica
                    before = len(sender.accepted)
                    await asyncio.sleep(2.0)
                finally:
                    await sender.stop()
                try:
                    assert len(sender.accepted) > before, (sender.statuses, sender.errors)
                    last = sender.accepted[-1]
                    for subscriber in subscribers:
                        await subscriber.wait_for(lambda s: last in s.ids, timeout=20)
                        assert_in_order_once(subscriber.ids)
                        assert set(sender.accepted) <= set(subscriber.ids), subscriber.kind
                finally:
                    for subscriber in subscribers:
                        await subscriber.stop()
    finally:
        redis.cleanup()
