"""Live delivery through Redis pub/sub, with the stream filling every hole (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from harness.chat import id_key
from server.core.model import Message
from server.store.broker import Broker
from server.store.keys import channel, stream_key
from server.store.relay import Relay

from .support import assert_in_order_once, sse_collector

ROOM = "relay"


class Received:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.presence: list[str] = []
        self.changed = asyncio.Event()

    def on_messages(self, room: str, messages: list[Message]) -> None:
        self.messages += messages
        self.changed.set()

    def on_presence(self, room: str) -> None:
        self.presence.append(room)
        self.changed.set()

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def relay_on(redis_url: str, redis: aioredis.Redis) -> AsyncIterator[tuple[Relay, Received]]:
    received = Received()
    relay = Relay(redis_url, Broker(redis, history_len=10_000))
    relay.deliver_to(received.on_messages, received.on_presence)
    task = asyncio.create_task(relay.run())
    try:
        yield relay, received
    finally:
        await relay.stop(task)


async def subscribed(redis: aioredis.Redis, room: str, count: int = 1) -> None:
    """Wait until Redis has ``count`` subscribers on the room's channel."""
    async with asyncio.timeout(5):
        while True:
            (_, subscribers), *_ = await redis.pubsub_numsub(channel(room))
            if subscribers >= count:
                return
            await asyncio.sleep(0.01)


async def test_published_messages_arrive_in_order_once(redis_url: str, redis: Any) -> None:
    broker = Broker(redis, history_len=10_000)
    async with relay_on(redis_url, redis) as (relay, received):
        relay.watch(ROOM, await broker.last_id(ROOM))
        await subscribed(redis, ROOM)

        async def send(n: int) -> list[str]:
            return [(await broker.publish(ROOM, "u-1", "A", f"{n}.{i}")).id for i in range(25)]

        batches = await asyncio.gather(*(send(n) for n in range(4)))
        sent = sorted((i for batch in batches for i in batch), key=id_key)
        await received.wait_for(lambda: len(received.messages) >= len(sent))
        assert received.ids == sent
        assert_in_order_once(received.ids)


async def test_watching_from_an_older_id_catches_up_from_the_stream(
    redis_url: str, redis: Any
) -> None:
    broker = Broker(redis, history_len=10_000)
    before = [await broker.publish(ROOM, "u-1", "A", f"old {i}") for i in range(5)]
    async with relay_on(redis_url, redis) as (relay, received):
        relay.watch(ROOM, before[1].parsed_id)
        await received.wait_for(lambda: len(received.messages) >= 3)
        live = await broker.publish(ROOM, "u-1", "A", "live")
        await received.wait_for(lambda: len(received.messages) >= 4)
    assert received.ids == [m.id for m in before[2:]] + [live.id]


async def test_a_message_missing_from_pubsub_is_read_from_the_stream(
    redis_url: str, redis: Any
) -> None:
    broker = Broker(redis, history_len=10_000)
    async with relay_on(redis_url, redis) as (relay, received):
        relay.watch(ROOM, await broker.last_id(ROOM))
        await subscribed(redis, ROOM)
        first = await broker.publish(ROOM, "u-1", "A", "one")
        # Stored but never published: what a lost pub/sub frame looks like.
        lost = await redis.xadd(stream_key(ROOM), {"u": "u-1", "n": "A", "t": "lost", "ts": "1"})
        third = await broker.publish(ROOM, "u-1", "A", "three")
        await received.wait_for(lambda: len(received.messages) >= 3)
        assert received.ids == [first.id, str(lost), third.id]
        assert [m.text for m in received.messages] == ["one", "lost", "three"]


async def test_a_relay_behind_the_trimmed_history_hands_on_the_rest_with_its_predecessors(
    redis_url: str, redis: Any
) -> None:
    broker = Broker(redis, history_len=10)
    sent = [await broker.publish(ROOM, "u-1", "A", f"m{i}") for i in range(150)]
    retained = [str(i) for i, _ in await redis.xrange(stream_key(ROOM))]
    first = [m.id for m in sent].index(retained[0])
    assert first > 1, "the history was never trimmed"
    async with relay_on(redis_url, redis) as (relay, received):
        relay.watch(ROOM, sent[0].parsed_id)
        await received.wait_for(lambda: len(received.messages) >= len(retained))
    assert received.ids == retained
    # The first says what it followed: the hub tells its subscribers of the hole.
    assert [m.prev for m in received.messages] == [m.parsed_id for m in sent[first - 1 : -1]]


async def test_unwatched_rooms_are_unsubscribed(redis_url: str, redis: Any) -> None:
    broker = Broker(redis, history_len=10_000)
    async with relay_on(redis_url, redis) as (relay, received):
        relay.watch(ROOM, await broker.last_id(ROOM))
        await subscribed(redis, ROOM)
        relay.unwatch(ROOM)
        async with asyncio.timeout(5):
            while (await redis.pubsub_numsub(channel(ROOM)))[0][1]:
                await asyncio.sleep(0.01)
        await broker.publish(ROOM, "u-1", "A", "nobody listens")
        relay.watch("other", await broker.last_id("other"))
        await subscribed(redis, "other")
        await broker.publish("other", "u-1", "A", "hello")
        await received.wait_for(lambda: len(received.messages) >= 1)
        assert [m.text for m in received.messages] == ["hello"]


async def test_pubsub_connection_dropping_while_messages_flow_loses_and_repeats_nothing(
    redis_url: str, redis: Any
) -> None:
    broker = Broker(redis, history_len=10_000)
    rooms = ["drop-a", "drop-b", "drop-c"]
    async with relay_on(redis_url, redis) as (relay, received):
        for room in rooms:
            relay.watch(room, await broker.last_id(room))
            await subscribed(redis, room)
        sent: list[Message] = []

        async def publish() -> None:
            for i in range(300):
                sent.append(await broker.publish(random.choice(rooms), "u-1", "A", str(i)))
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(publish())
        kills = 0
        while not publishing.done():
            await asyncio.sleep(0.1)
            # Real disconnects: Redis drops every pub/sub client.
            kills += await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await publishing
        assert kills >= 3
        await received.wait_for(lambda: len(received.messages) >= len(sent), timeout=15)
        for room in rooms:
            got = [m.id for m in received.messages if m.room == room]
            assert got == [m.id for m in sent if m.room == room]
        assert len(received.messages) == len(sent)


async def command_calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_ping")
    }


async def test_redis_commands_per_message_do_not_grow_with_rooms_or_subscribers(
    make_app: Any, aiohttp_client: Any, redis: Any
) -> None:
    client = await aiohttp_client(
        await make_app(heartbeat_s=3600), server_kwargs={"handler_cancellation": True}
    )
    session = await client.get("/api/session")
    assert session.status == 200
    # Load the scripts once (SCRIPT LOAD is not a per-message cost).
    warm_up = await client.post("/api/rooms/warm-up/messages", json={"text": "hi"})
    assert warm_up.status == 201
    from server.web import state as keys

    announcer = client.server.app[keys.ANNOUNCER]

    async def calls_per_message(rooms: list[str], subscribers_per_room: int) -> dict[str, float]:
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for room in rooms:
                for _ in range(subscribers_per_room):
                    jar = aiohttp.CookieJar(unsafe=True)
                    reader = aiohttp.ClientSession(cookie_jar=jar)
                    await stack.enter_async_context(reader)
                    url = client.make_url(f"/api/rooms/{room}/events")
                    streams.append(await stack.enter_async_context(sse_collector(reader, url)))
            for room in rooms:
                await subscribed(redis, room)
            # Let the joins' presence announcements settle before counting.
            for collector in streams:
                await collector.wait_for(lambda c: c.count == subscribers_per_room)
            # The rooms exist (a message creating a room costs a check more).
            for room in rooms:
                resp = await client.post(f"/api/rooms/{room}/messages", json={"text": "first"})
                assert resp.status == 201
            async with asyncio.timeout(5):
                while announcer._pending:
                    await asyncio.sleep(0.01)
            before = await command_calls(redis)
            posted = 30
            for i in range(posted):
                resp = await client.post(
                    f"/api/rooms/{rooms[i % len(rooms)]}/messages", json={"text": str(i)}
                )
                assert resp.status == 201
            after = await command_calls(redis)
            for collector in streams:
                await collector.wait_for(lambda c: len(c.messages) >= 1 + posted // len(rooms))
        used = {name: n - before.get(name, 0) for name, n in after.items()}
        return {name: n / posted for name, n in used.items() if n}

    one_room = await calls_per_message(["solo"], 1)
    many = await calls_per_message([f"room-{n}" for n in range(30)], 3)
    # The same commands, as many times, per message.
    assert many == one_room
