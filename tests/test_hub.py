"""The hub on its own, with a backend in memory: joins, ordering, overflow."""

from __future__ import annotations

import asyncio

import pytest

from server.hub import Closing, Hub, Overflow
from server.metrics import Metrics
from server.model import Message

METRICS = Metrics(instance="test", worker=0, reloads=0)


class SlowBackend:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.messages: list[Message] = []

    async def last_id(self, room: str) -> str:
        await self.release.wait()
        return self.messages[-1].id if self.messages else "0-0"

    async def read_after(self, room: str, after: str, count: int) -> list[Message]:
        key = tuple(map(int, after.split("-")))
        return [m for m in self.messages if m.key > key][:count]


def message(n: int) -> Message:
    return Message(f"{n}-0", "r", "u-1", "n", f"t{n}", 0.0)


async def test_a_joiner_hanging_up_does_not_cancel_the_others() -> None:
    backend = SlowBackend()
    hub = Hub(backend, buffer_limit=10, metrics=METRICS)
    first = asyncio.create_task(hub.subscribe("r", "u-1", "A", None))
    second = asyncio.create_task(hub.subscribe("r", "u-2", "B", None))
    await asyncio.sleep(0.01)
    first.cancel()
    backend.release.set()
    subscription = await asyncio.wait_for(second, 1)
    assert subscription.room.name == "r"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_replay_and_live_overlap_is_sent_once_in_order() -> None:
    backend = SlowBackend()
    backend.release.set()
    backend.messages = [message(n) for n in range(1, 6)]
    hub = Hub(backend, buffer_limit=100, metrics=METRICS)
    subscription = await hub.subscribe("r", "u-1", "A", (2, 0))
    # Live delivery of messages the replay also returns, and newer ones.
    hub.rooms["r"].cursor = (3, 0)
    hub.dispatch("r", [message(4), message(5), message(6)])
    backend.messages.append(message(6))
    received: list[str] = []
    async with asyncio.timeout(2):
        async for event in subscription.events(backend):
            if isinstance(event, list):
                received += [m.id for m in event]
            if received[-1:] == ["6-0"]:
                break
    hub.dispatch("r", [message(7)])
    async with asyncio.timeout(2):
        async for event in subscription.events(backend):
            if isinstance(event, list):
                received += [m.id for m in event]
                break
    assert received == ["3-0", "4-0", "5-0", "6-0", "7-0"]


async def test_overflowing_subscriber_stops_buffering_and_raises() -> None:
    backend = SlowBackend()
    backend.release.set()
    hub = Hub(backend, buffer_limit=3, metrics=METRICS)
    subscription = await hub.subscribe("r", "u-1", "A", None)
    hub.dispatch("r", [message(n) for n in range(1, 5)])
    hub.dispatch("r", [message(5)])
    assert subscription.overflowed and not subscription.buffer
    with pytest.raises(Overflow):
        async for _ in subscription.events(backend):
            pass


async def test_no_subscriptions_once_closing() -> None:
    backend = SlowBackend()
    backend.release.set()
    hub = Hub(backend, buffer_limit=3, metrics=METRICS)
    existing = await hub.subscribe("r", "u-1", "A", None)
    hub.close_all("shutdown")
    assert existing.closed and existing.close_reason == "shutdown"
    with pytest.raises(Closing):
        await hub.subscribe("r", "u-2", "B", None)
