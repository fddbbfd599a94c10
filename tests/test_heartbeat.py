"""The heartbeat's ticks never pile up: a tick that fires while the last one
still runs (an overloaded worker: thousands of connections arriving) is
skipped, and the shares wait their turn. Real app and Redis; the last
tick is held at its lease renewal by a gate."""

from __future__ import annotations

import asyncio
from typing import Any

from server.web import state as keys


async def test_a_tick_while_the_last_one_runs_is_skipped(make_app: Any) -> None:
    app = await make_app()
    beat = app[keys.HEARTBEAT]
    gate = asyncio.Event()
    renewals: list[int] = []

    async def refresh(parts: int = 1) -> None:
        renewals.append(parts)
        await gate.wait()

    beat.connections.refresh = refresh
    first = asyncio.create_task(beat.tick(beat.interval))
    async with asyncio.timeout(5):
        while not renewals:
            await asyncio.sleep(0.01)
        await beat.tick(beat.interval)  # returns at once, doing nothing
    assert renewals == [beat.parts]
    gate.set()
    async with asyncio.timeout(5):
        await first
        await beat.tick(beat.interval)
    assert renewals == [beat.parts, beat.parts]
