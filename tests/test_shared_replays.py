"""Clients that resume together share one read of the history (real server, real Redis).

After a reload or a network outage, a room's clients come back at about the
same moment from the same id, the last message they all got. The worker
reads that page of history once for all of them, and each still gets every
message after its id once, in order, with no gap; once a newer message was
dispatched in the room, a replay reads afresh (the page read before it
would lack the message).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from .support import ServerProcess, assert_in_order_once, sse_collector, store_history

pytestmark = [pytest.mark.processes, pytest.mark.timeout(60)]

ROOM = "together"
MESSAGES = 40
RESUME_AT = 9  # every client saw the first ten messages
CLIENTS = 20
EVENTS = f"/api/rooms/{ROOM}/events"


async def fill_history(admin: aioredis.Redis) -> list[str]:
    """Store MESSAGES messages in ROOM as the server would (each keeps its predecessor)."""
    return await store_history(admin, ROOM, [f"message {n}" for n in range(MESSAGES)])


@pytest_asyncio.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def history_reads(admin: aioredis.Redis) -> int:
    """How many XRANGE calls Redis has answered since its statistics were reset."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


async def test_clients_resuming_together_share_one_read_and_each_gets_every_message_once(
    start_server: Callable[..., ServerProcess], admin: aioredis.Redis
) -> None:
    ids = await fill_history(admin)
    server = start_server(workers=1)
    await admin.config_resetstat()
    async with (
        aiohttp.ClientSession(server.url) as session,
        contextlib.AsyncExitStack() as stack,
    ):
        readers = await asyncio.gather(
            *(
                stack.enter_async_context(
                    sse_collector(session, EVENTS, params={"last_event_id": ids[RESUME_AT]})
                )
                for _ in range(CLIENTS)
            )
        )
        for reader in readers:
            await reader.wait_for(lambda c: len(c.ids) >= MESSAGES - RESUME_AT - 1, timeout=20)
            assert_in_order_once(reader.ids)
            assert reader.ids == ids[RESUME_AT + 1 :]
            assert reader.gaps == []
        reads = await history_reads(admin)
    # The relay's own read when the room is first watched, then one page for
    # all of them (two if the last of them asked over a second after the
    # first read: a page is kept for a second); one each without sharing.
    assert 1 <= reads <= 3, f"{reads} history reads for {CLIENTS} clients resuming together"


async def test_a_replay_after_a_newer_message_reads_afresh_and_misses_nothing(
    start_server: Callable[..., ServerProcess], admin: aioredis.Redis
) -> None:
    ids = await fill_history(admin)
    server = start_server(workers=1)
    resume = {"last_event_id": ids[RESUME_AT]}
    async with aiohttp.ClientSession(server.url) as session:
        async with sse_collector(session, EVENTS, params=resume) as first:
            await first.wait_for(lambda c: len(c.ids) >= MESSAGES - RESUME_AT - 1, timeout=20)
            # A new message, dispatched to the first client live, within
            # the second its page is kept.
            async with session.post(
                f"/api/rooms/{ROOM}/messages", json={"text": "after the page"}
            ) as resp:
                assert resp.status == 201, await resp.text()
                new = (await resp.json())["message"]["id"]
            await first.wait_for(lambda c: new in c.ids, timeout=10)
            async with sse_collector(session, EVENTS, params=resume) as second:
                await second.wait_for(lambda c: new in c.ids, timeout=10)
                assert second.ids == [*ids[RESUME_AT + 1 :], new]
                assert second.gaps == []
