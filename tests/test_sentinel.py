"""The chat on a primary watched by Redis Sentinel, through a failover: real
processes (a primary, a replica, a Sentinel, the server with two workers)."""

from __future__ import annotations

import pytest

from .support import fault_under_traffic, running_server, sentinel_processes

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


async def test_the_chat_follows_the_primary_sentinel_names_and_loses_no_answered_message() -> None:
    redis = sentinel_processes()
    try:
        redis.start()

        def fail_over() -> None:
            redis.kill(redis.primary)
            redis.wait_primary(redis.replica)  # the Sentinel promoted the replica

        with running_server(redis_url=redis.url, workers=2) as server:
            await fault_under_traffic(server.url, ["ha"], fail_over)
    finally:
        redis.cleanup()
