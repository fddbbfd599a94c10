"""The benchmark's ceiling, the bare broadcaster (``benchmarks/peer_bare.py``):
it must really publish every message it is sent, however many arrive at
once (a 500 costs far less than a publish, and would flatter it), and
answer typing notices as ``bare-typing`` needs."""

from __future__ import annotations

import asyncio
import pathlib
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
import redis

from benchmarks.targets import BareTarget, ServerOptions
from harness.redis_servers import RedisProcess

pytestmark = [pytest.mark.processes, pytest.mark.timeout(60)]

AT_ONCE = 300  # more than redis-py's default pool of 100 connections would take


async def test_more_posts_at_once_than_its_pool_has_connections_are_all_published(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    store = cast(RedisProcess, SimpleNamespace(url=redis_url))
    target = BareTarget(ServerOptions(workers=1, users=1), store, str(tmp_path))
    target.start()
    try:
        connector = aiohttp.TCPConnector(limit=AT_ONCE)
        async with aiohttp.ClientSession(target.base_url, connector=connector) as http:

            async def post(n: int) -> int:
                async with http.post("/api/rooms/bench/messages", json={"text": f"m{n}"}) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(post(n) for n in range(AT_ONCE)))
            async with http.post("/api/rooms/bench/typing") as resp:
                typing = resp.status
        assert statuses == [201] * AT_ONCE
        assert typing == 204
        client = redis.Redis.from_url(redis_url)
        try:
            assert int(client.get("bare:seq:bench") or 0) == AT_ONCE
        finally:
            client.close()
    finally:
        target.stop()
