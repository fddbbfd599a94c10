"""The chat on a Redis Cluster: real processes on a real six-node cluster
(three primaries, one replica each), formed by the test fixture."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from redis.cluster import key_slot
from redis.exceptions import MaxConnectionsError

from harness.redis_servers import ClusterProcesses
from server.common import redisurl
from server.store import clients as redis_clients
from server.store.keys import stream_key

from .support import (
    ServerProcess,
    cluster_processes,
    fault_under_traffic,
    running_server,
    sse_collector,
    ws_collector,
)

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


def rooms_on_every_primary(cluster: ClusterProcesses) -> dict[int, str]:
    """A room whose keys live on each primary, by the primary's port."""
    owners = cluster.primaries()
    rooms: dict[int, str] = {}
    n = 0
    while len(rooms) < len(owners):
        room = f"shard-{n}"
        slot = key_slot(stream_key(room).encode())
        port = next(p for p, ranges in owners.items() if any(a <= slot <= b for a, b in ranges))
        rooms.setdefault(port, room)
        n += 1
    return rooms


def jar() -> aiohttp.CookieJar:
    # unsafe=True: aiohttp keeps no cookies from IP-address hosts otherwise.
    return aiohttp.CookieJar(unsafe=True)


async def post(
    http: aiohttp.ClientSession, base: str, room: str, text: str, **kwargs: object
) -> aiohttp.ClientResponse:
    async with http.post(f"{base}/api/rooms/{room}/messages", json={"text": text}, **kwargs) as r:
        await r.read()
        return r


async def test_rooms_on_every_shard_reach_every_worker_and_instance(
    start_server: Callable[..., ServerProcess],
    redis_cluster: ClusterProcesses,
    cluster_url: str,
) -> None:
    one = start_server(workers=2, redis_url=cluster_url)
    two = start_server(workers=1, redis_url=cluster_url)
    rooms = rooms_on_every_primary(redis_cluster)
    async with (
        aiohttp.ClientSession(cookie_jar=jar()) as alice,
        aiohttp.ClientSession(cookie_jar=jar()) as bob,
    ):
        for port, room in rooms.items():
            async with (
                sse_collector(alice, f"{two.url}/api/rooms/{room}/events") as on_two,
                ws_collector(bob, f"{one.url}/api/rooms/{room}/ws") as on_one,
            ):
                # Presence crosses instances: each sees both, and a rename.
                await on_two.wait_for(lambda c: len(c.presence and c.presence[-1]) == 2)
                await on_one.wait_for(lambda c: len(c.presence and c.presence[-1]) == 2)
                name = f"Alice of {room}"
                async with alice.put(f"{one.url}/api/session", json={"name": name}) as resp:
                    assert resp.status == 200
                for collector in (on_one, on_two):
                    await collector.wait_for(
                        lambda c, name=name: name in [u["name"] for u in c.presence[-1]]
                    )
                sent = []
                for n in range(5):
                    base = one.url if n % 2 else two.url
                    resp = await post(alice, base, room, f"{room} {n}")
                    assert resp.status == 201
                    sent.append((await resp.json())["message"]["id"])
                for collector in (on_one, on_two):
                    await collector.wait_for(lambda c, last=sent[-1]: last in c.ids)
                    assert collector.ids == sent and collector.gaps == []
            # The room's history is on that primary, and only there.
            node = redis.Redis(port=port, decode_responses=True)
            try:
                assert node.xlen(stream_key(room)) == len(sent)
            finally:
                node.close()
            # Bob comes back on the other instance from the first message:
            # the other four, no gap, no double.
            async with sse_collector(
                bob, f"{two.url}/api/rooms/{room}/events", headers={"Last-Event-ID": sent[0]}
            ) as back:
                await back.wait_for(lambda c: len(c.ids) >= 4)
                assert back.ids == sent[1:] and back.gaps == []


async def test_budgets_and_idempotency_keys_hold_across_instances(
    start_server: Callable[..., ServerProcess], any_redis_url: str
) -> None:
    budget = {"CHAT_RATE_LIMIT_PER_S": "0.1", "CHAT_RATE_LIMIT_BURST": "3"}
    one = start_server(workers=2, redis_url=any_redis_url, env=budget)
    two = start_server(workers=1, redis_url=any_redis_url, env=budget)
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        keyed = {"headers": {"Idempotency-Key": "k-1"}}
        first = await post(http, one.url, "budget", "once", **keyed)
        again = await post(http, two.url, "budget", "once", **keyed)
        assert first.status == 201 and again.status == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        # The replay took nothing from the budget: two more go through, on
        # either instance, and then the user is over it on both.
        assert (await post(http, two.url, "budget", "two")).status == 201
        assert (await post(http, one.url, "budget", "three")).status == 201
        for base in (one.url, two.url):
            refused = await post(http, base, "budget", "four")
            assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
        async with http.get(f"{two.url}/api/rooms/budget/messages") as resp:
            texts = [m["text"] for m in (await resp.json())["messages"]]
        assert texts == ["once", "two", "three"]


async def test_a_post_reads_its_room_up_to_it_on_one_redis_and_on_a_cluster(
    start_server: Callable[..., ServerProcess], any_redis_url: str
) -> None:
    # One Redis: in the publish script; a cluster: a round trip of its own
    # (the user's keys are in another slot than the room's).
    server = start_server(workers=1, redis_url=any_redis_url)
    async with (
        aiohttp.ClientSession(cookie_jar=jar()) as alice,
        aiohttp.ClientSession(cookie_jar=jar()) as bob,
    ):

        async def alices_rooms() -> list[tuple[str, object]]:
            async with alice.get(f"{server.url}/api/rooms") as resp:
                assert resp.status == 200
                return [(r["room"], r["unread"]) for r in (await resp.json())["rooms"]]

        for n in range(2):
            assert (await post(bob, server.url, "marks", f"bob {n}")).status == 201
        assert (await post(alice, server.url, "marks", "alice")).status == 201
        assert await alices_rooms() == [("marks", 0)]
        assert (await post(bob, server.url, "marks", "bob again")).status == 201
        assert await alices_rooms() == [("marks", 1)]


async def test_a_primary_failing_over_under_traffic_loses_no_answered_message() -> None:
    cluster = cluster_processes()  # its own: this test breaks one of its primaries
    try:
        cluster.start()
        rooms = rooms_on_every_primary(cluster)
        victim = next(iter(rooms))

        def fail_over() -> None:
            cluster.kill(victim)
            cluster.wait_failover(victim)  # a replica takes over its slots

        with running_server(redis_url=cluster.url, workers=2) as server:
            # Every room, the failed-over one too, is written again.
            await fault_under_traffic(server.url, list(rooms.values()), fail_over, min_accepted=20)
    finally:
        cluster.cleanup()


async def test_a_burst_beyond_a_nodes_connections_waits_for_one(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's cluster client refuses a command the moment all of a node's
    # connections are busy: a storm of requests would get 503s.
    plain = aioredis.RedisCluster.from_url(cluster_url, max_connections=4)
    try:
        done = await asyncio.gather(
            *(plain.incr("burst:plain") for _ in range(100)), return_exceptions=True
        )
        assert any(isinstance(result, MaxConnectionsError) for result in done)
    finally:
        await plain.aclose()
    # The server's waits for one, for commands and pipelines alike (a
    # pipeline here spans every primary).
    monkeypatch.setattr(redis_clients, "CLUSTER_COMMANDS", 4)
    async with redis_clients.redis_client(redisurl.cluster_url(cluster_url)) as client:

        async def one(i: int) -> None:
            if i % 2:
                await client.incr("burst")
                return
            pipe = client.pipeline(transaction=False)
            for n in range(6):
                pipe.incr(f"burst:{n}")
            await pipe.execute()

        await asyncio.gather(*(one(i) for i in range(200)))
        assert int(await client.get("burst")) == 100
        assert [int(await client.get(f"burst:{n}")) for n in range(6)] == [100] * 6


async def test_a_cluster_command_waits_for_a_turn_only_so_long(cluster_url: str) -> None:
    url = redisurl.node_url(redisurl.cluster_url(cluster_url))
    client = redis_clients.WaitingCluster.from_url(url, wait_s=0.2, commands=1)
    try:
        # The one turn is taken by a command that blocks for 3 s...
        held = asyncio.create_task(client.blpop(["turns:nothing"], timeout=3))
        await asyncio.sleep(0)  # (it takes the turn before its first await)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):  # ... which the server answers with 503
            await client.get("turns:x")
        assert time.monotonic() - started < 1
        # A cancelled command gives its turn back.
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        assert await client.set("turns:x", "1")
    finally:
        await client.aclose()


def test_cluster_and_sentinel_urls_are_read_and_checked() -> None:
    assert redisurl.kind_of("redis://127.0.0.1:6379/0") == "single"
    assert redisurl.kind_of("unix:///run/redis.sock") == "single"
    assert redisurl.kind_of("redis+cluster://10.0.0.1:7000") == "cluster"
    assert redisurl.node_url("rediss+cluster://:pw@n1:7000") == "rediss://:pw@n1:7000"
    assert redisurl.cluster_url("redis://n1:7000/0") == "redis+cluster://n1:7000/0"
    found = redisurl.sentinels(
        "redis+sentinel://:pw@s1:26379,[::1]:26380/chat/2?sentinel_password=sesame"
    )
    assert found.addresses == [("s1", 26379), ("::1", 26380)]
    assert (found.service, found.db, found.password) == ("chat", 2, "pw")
    assert found.sentinel_password == "sesame"
    assert redisurl.sentinels("redis+sentinel://s1:26379").service == redisurl.DEFAULT_SERVICE
    for bad in (
        "http://127.0.0.1:6379",
        "127.0.0.1:6379",
        "redis+cluster://n1:7000/3",  # a cluster has database 0 only
        "redis+cluster:///0",
        "redis+sentinel://s1/chat",  # no port
        "redis+sentinel://s1:26379/chat/x",
    ):
        with pytest.raises(redisurl.BadRedisURL):
            redisurl.validate(bad)
