"""Webhooks, with real server processes (two workers and the webhook
deliverer), real Redis and a real receiver: signed events, only those
configured, at least once and in order per room through failures, kills
(of a worker, of the deliverer) and reloads, bounded when the receiver
hangs, and dead letters that an operator replays."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from benchmarks.procfs import title
from harness.chat import id_key
from harness.processes import clean_env

from .support import ServerProcess, rss_kb, user, worker_pids
from .test_metrics import samples
from .test_processes import children
from .webhook_receiver import SECRET, Receiver, running_receiver

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

StartServer = Callable[..., ServerProcess]


def hooked(receiver: Receiver, **env: str) -> dict[str, str]:
    return {"CHAT_WEBHOOK_URL": receiver.url, "CHAT_WEBHOOK_SECRET": SECRET, **env}


async def post(session: aiohttp.ClientSession, room: str, text: str) -> dict[str, Any]:
    """Post until it is stored (the same Idempotency-Key on every try: a
    worker killed or replaced in between stores it once)."""
    key = f"k-{room}-{text}".replace(" ", "_")
    async with asyncio.timeout(30):
        while True:
            try:
                async with session.post(
                    f"/api/rooms/{room}/messages",
                    json={"text": text},
                    headers={"Idempotency-Key": key},
                ) as resp:
                    if resp.status == 201:
                        message: dict[str, Any] = (await resp.json())["message"]
                        return message
            except (aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(0.05)


async def deliverer_pid(server: ServerProcess, other_than: int = 0) -> int:
    """The pid of the server's webhook deliverer (once one other than
    ``other_than`` runs)."""
    assert server.proc is not None
    async with asyncio.timeout(15):
        while True:
            for pid in children(server.proc.pid):
                with contextlib.suppress(OSError):
                    if title(pid) == "chat-server: webhook deliverer" and pid != other_than:
                        return pid
            await asyncio.sleep(0.05)


def key(event: dict[str, Any]) -> tuple[str, str]:
    """The message an event reports: its room and id."""
    return event["data"]["room"], event["data"]["id"]


def assert_in_room_order(events: dict[str, dict[str, Any]], rooms: list[str]) -> None:
    """In order per room, as first seen (repeats come only after a delivery
    whose answer was lost)."""
    by_room: dict[str, list[str]] = defaultdict(list)
    for event in events.values():
        by_room[event["data"]["room"]].append(event["data"]["id"])
    for room in rooms:
        assert by_room[room] == sorted(by_room[room], key=id_key), room


def once_each(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """The accepted events deduplicated by id, first arrival kept."""
    seen: dict[str, dict[str, Any]] = {}
    for event in receiver.accepted:
        seen.setdefault(event["id"], event)
    return seen


@pytest.mark.parametrize("redis_kind", ["redis", "cluster"])
async def test_events_are_signed_and_carry_the_message_and_only_configured_kinds(
    start_server: StartServer, request: pytest.FixtureRequest, redis_kind: str
) -> None:
    url = request.getfixturevalue("redis_url" if redis_kind == "redis" else "cluster_url")
    async with running_receiver() as receiver:
        server = start_server(redis_url=url, env=hooked(receiver))
        async with user(server.url) as alice:
            # A stream opened and closed: user.joined and user.left are not configured.
            async with alice.get("/api/rooms/lobby/events") as stream:
                assert stream.status == 200
                posted = [await post(alice, "lobby", f"hello {i}") for i in range(3)]
        await receiver.wait_for(lambda r: len(r.accepted) >= 3, 15)
        await asyncio.sleep(1)  # anything else would have come by now
    assert [a.status for a in receiver.attempts] == [204] * 3
    for attempt, message in zip(receiver.attempts, posted, strict=True):
        assert attempt.headers["Content-Type"] == "application/json"
        assert attempt.signed_with(SECRET)
        assert not attempt.signed_with(SECRET + "x")
        event = attempt.event
        assert set(event) == {"id", "type", "created", "data"}
        assert event["type"] == "message.created"
        assert event["data"] == message
        assert event["created"] == message["ts"]
    assert len({a.event["id"] for a in receiver.attempts}) == 3


async def test_edits_and_deletions_follow_their_message_in_order(
    start_server: StartServer,
) -> None:
    async with running_receiver() as receiver:
        server = start_server(env=hooked(receiver))  # (the default events: message.*)
        async with user(server.url) as alice:
            first = await post(alice, "lobby", "helo")
            second = await post(alice, "lobby", "to go")
            path = "/api/rooms/lobby/messages/"
            async with alice.patch(path + first["id"], json={"text": "hello"}) as resp:
                assert resp.status == 200, await resp.text()
                edited = (await resp.json())["message"]
            async with alice.delete(path + second["id"]) as resp:
                assert resp.status == 204, await resp.text()
        await receiver.wait_for(lambda r: len(r.accepted) >= 4, 15)
        await asyncio.sleep(1)  # anything else would have come by now
    events = receiver.accepted
    kinds = ["message.created", "message.created", "message.updated", "message.deleted"]
    assert [e["type"] for e in events] == kinds
    assert [e["data"] for e in events[:2]] == [first, second]
    assert events[2]["data"] == edited
    assert events[2]["created"] == edited["edited"]
    assert events[3]["data"] == second
    assert all(a.signed_with(SECRET) for a in receiver.attempts)
    assert len({e["id"] for e in events}) == 4


async def test_events_delivered_before_a_failed_one_are_not_sent_again(
    start_server: StartServer,
) -> None:
    """Events are taken from the outbox several at a time: when one fails, those
    delivered before it are dropped all the same, and the rest follow it."""
    async with running_receiver() as receiver:
        server = start_server(env=hooked(receiver))
        receiver.hold_until = time.monotonic() + 3  # the first answer waits: the rest queue up
        receiver.fail_once = {"m3"}
        async with user(server.url) as alice:
            await post(alice, "lobby", "m0")
            await receiver.wait_for(lambda r: r.in_flight == 1, 15)
            for i in range(1, 6):
                await post(alice, "lobby", f"m{i}")
            assert receiver.in_flight == 1 and not receiver.attempts  # all queued behind m0
        await receiver.wait_for(lambda r: len(r.accepted) >= 6, 30)
        await asyncio.sleep(1)  # anything else would have come by now
    sent = [(a.event["data"]["text"], a.status) for a in receiver.attempts]
    assert sent == [
        ("m0", 204),
        ("m1", 204),
        ("m2", 204),
        ("m3", 500),
        ("m3", 204),
        ("m4", 204),
        ("m5", 204),
    ]


async def test_nothing_is_written_to_redis_without_a_webhook_url(
    start_server: StartServer, redis: aioredis.Redis
) -> None:
    server = start_server(env={"CHAT_WEBHOOK_EVENTS": "message.created,user.joined,user.left"})
    async with user(server.url) as alice:
        async with alice.get("/api/rooms/lobby/events") as stream:
            assert stream.status == 200
            await post(alice, "lobby", "hello")
    keys = [key async for key in redis.scan_iter(match="*webhooks*")]
    assert keys == []
    assert await redis.exists("chat:{lobby}:messages")


async def test_user_joined_and_left_are_sent_when_configured(start_server: StartServer) -> None:
    async with running_receiver() as receiver:
        env = hooked(receiver, CHAT_WEBHOOK_EVENTS="user.joined,user.left")
        server = start_server(env=env)
        async with user(server.url) as alice:
            async with alice.get("/api/session") as resp:
                me = await resp.json()
            async with alice.get("/api/rooms/lobby/events") as stream:
                assert stream.status == 200
                # A second connection of the same user: not a second join.
                async with alice.get("/api/rooms/lobby/events") as again:
                    assert again.status == 200
                    await post(alice, "lobby", "not sent")
                    await receiver.wait_for(lambda r: len(r.accepted) >= 1, 15)
            await receiver.wait_for(lambda r: len(r.accepted) >= 2, 15)
        await asyncio.sleep(1)
    events = receiver.accepted
    assert [e["type"] for e in events] == ["user.joined", "user.left"]
    user_data = {"room": "lobby", "user_id": me["user_id"], "name": me["name"]}
    assert [e["data"] for e in events] == [user_data, user_data]
    assert all(a.signed_with(SECRET) for a in receiver.attempts)


async def test_a_thousand_events_arrive_once_each_in_room_order_through_failures_kill_and_reload(
    start_server: StartServer,
) -> None:
    rooms = [f"room-{i}" for i in range(10)]
    async with running_receiver() as receiver:
        server = start_server(env=hooked(receiver))
        receiver.fail_until = time.monotonic() + 10
        # Until the kill, answers wait: the reload then stops the deliverer
        # with rooms held, which the next one takes over.
        receiver.hold_until = time.monotonic() + 2
        async with user(server.url) as alice:

            async def send(room: str) -> list[dict[str, Any]]:
                return [await post(alice, room, f"m{n}") for n in range(100)]

            async def disturb() -> None:
                await asyncio.sleep(1.5)
                pids = await worker_pids(server.url)
                os.kill(pids[1], signal.SIGKILL)
                await asyncio.sleep(1.5)
                server.signal(signal.SIGHUP)

            *sent, _ = await asyncio.gather(*(send(room) for room in rooms), disturb())
        # (Ids are unique within a room.)
        posted = {(m["room"], m["id"]): m for messages in sent for m in messages}
        assert len(posted) == 1000

        def all_in(r: Receiver) -> bool:
            return {key(e) for e in once_each(r).values()} >= set(posted)

        await receiver.wait_for(all_in, 45)
    assert any(a.status == 500 for a in receiver.attempts)
    assert all(a.signed_with(SECRET) for a in receiver.attempts)
    events = once_each(receiver)
    assert len(events) == 1000
    assert sorted(key(e) for e in events.values()) == sorted(posted)
    assert all(e["data"] == posted[key(e)] for e in events.values())
    assert_in_room_order(events, rooms)
    assert "Traceback" not in server.log()


async def counted(http: aiohttp.ClientSession, delivered: int) -> dict[str, float]:
    """The instance's metrics once they count ``delivered`` deliveries: the
    deliverer counts one after its receiver has it (for at most 5 s more)."""
    ok = 'chat_webhook_deliveries_total{result="ok"}'
    async with asyncio.timeout(5):
        while True:
            async with http.get("/metrics") as resp:
                found = samples(await resp.text())
            if found.get(ok, 0) >= delivered:
                return found
            await asyncio.sleep(0.05)


async def test_one_deliverer_process_beside_the_workers_is_woken_when_a_room_becomes_due(
    start_server: StartServer, redis: aioredis.Redis
) -> None:
    async with running_receiver() as receiver, redis.pubsub() as pubsub:
        await pubsub.subscribe("chat:webhooks:due")
        server = start_server(env=hooked(receiver))
        assert server.proc is not None
        assert sorted(title(pid) for pid in children(server.proc.pid)) == [
            "chat-server: keeper",
            "chat-server: webhook deliverer",
            "chat-server: worker 0",
            "chat-server: worker 1",
        ]
        # When the CPU is short, the serving workers come first.
        niceness = {
            title(pid): os.getpriority(os.PRIO_PROCESS, pid) for pid in children(server.proc.pid)
        }
        assert niceness["chat-server: webhook deliverer"] == niceness["chat-server: worker 0"] + 5
        async with user(server.url) as alice:
            message = await post(alice, "lobby", "hello")
            async with asyncio.timeout(5):
                published = None
                while published is None:
                    published = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            assert published["data"] == "lobby"
            await receiver.wait_for(lambda r: len(r.accepted) == 1, 10)
            found = await counted(alice, 1)
        assert receiver.accepted[0]["data"] == message
        # The workers, as users count them, are the two serving.
        assert sum(v for k, v in found.items() if k.startswith("chat_worker_up")) == 2
        assert found['chat_webhook_deliveries_total{result="ok"}'] == 1
        assert "the webhook deliverer is delivering (pid" in server.log()


async def test_a_killed_deliverer_is_replaced_and_its_rooms_are_delivered_once_each_in_order(
    start_server: StartServer,
) -> None:
    rooms = [f"room-{i}" for i in range(10)]
    async with running_receiver() as receiver:
        server = start_server(env=hooked(receiver))
        workers = await worker_pids(server.url)
        killed = await deliverer_pid(server)
        # Answers wait: the deliverer dies with deliveries in flight.
        receiver.hold_until = time.monotonic() + 3
        async with user(server.url) as alice:

            async def send(room: str) -> list[dict[str, Any]]:
                return [await post(alice, room, f"m{n}") for n in range(30)]

            async def kill() -> None:
                await receiver.wait_for(lambda r: r.in_flight >= 5, 15)
                os.kill(killed, signal.SIGKILL)

            *sent, _ = await asyncio.gather(*(send(room) for room in rooms), kill())
            replacement = await deliverer_pid(server, other_than=killed)
            posted = {(m["room"], m["id"]) for messages in sent for m in messages}
            # Its rooms wait for their leases to run out (6 s), then go on.
            await receiver.wait_for(lambda r: {key(e) for e in once_each(r).values()} >= posted, 45)
            found = await counted(alice, 300)
            assert await worker_pids(server.url) == workers  # the workers served on
        events = once_each(receiver)
        assert len(events) == len(posted) == 300
        assert_in_room_order(events, rooms)
        # The killed deliverer's counts stay in the instance's metrics.
        assert found['chat_webhook_deliveries_total{result="ok"}'] >= 300
        log = server.log()
        assert f"the webhook deliverer (pid {killed}) died; starting a replacement" in log
        assert f"the webhook deliverer is delivering again (pid {replacement})" in log
        assert "Traceback" not in log


async def test_a_receiver_that_never_answers_holds_a_bounded_number_of_deliveries(
    start_server: StartServer,
) -> None:
    rooms = [f"room-{i}" for i in range(100)]  # more than MAX_ROOMS
    async with running_receiver() as receiver:
        receiver.hang = True
        server = start_server(env=hooked(receiver))
        deliverer = await deliverer_pid(server)
        async with user(server.url) as alice:
            await asyncio.gather(*(post(alice, room, "x") for room in rooms))
            async with asyncio.timeout(15):
                while receiver.in_flight < 64:  # the instance's deliverer, 64 rooms
                    await asyncio.sleep(0.05)
            rss_before = rss_kb(deliverer)
            await asyncio.gather(*(post(alice, rooms[i % 100], f"y{i}") for i in range(600)))
            # Past the delivery timeout (10 s): the first tries failed, and
            # were tried again, with as many in flight at most.
            deadline = time.monotonic() + 13
            while time.monotonic() < deadline:
                assert receiver.in_flight <= 64
                await asyncio.sleep(0.2)
            async with alice.get("/metrics") as resp:
                found = samples(await resp.text())
        assert receiver.most_in_flight <= 64  # one event a room
        assert found['chat_webhook_deliveries_total{result="failed"}'] >= 64
        assert found["chat_webhook_lag_seconds"] >= 10
        assert rss_kb(deliverer) - rss_before < 20_000


def webhooks_command(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "webhooks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


async def test_events_dead_after_the_retry_period_show_in_metrics_and_are_replayed(
    start_server: StartServer, redis_url: str, tmp_path: Any
) -> None:
    async with running_receiver() as receiver:
        receiver.fail_until = time.monotonic() + 3600
        server = start_server(env=hooked(receiver, CHAT_WEBHOOK_RETRY_FOR_S="2"))
        async with user(server.url) as alice:
            posted = [await post(alice, "lobby", f"doomed {i}") for i in range(2)]

            async def metrics() -> dict[str, float]:
                async with alice.get("/metrics") as resp:
                    return samples(await resp.text())

            async with asyncio.timeout(20):
                while (await metrics()).get("chat_webhook_dead_letters", 0) < 2:
                    await asyncio.sleep(0.2)
            found = await metrics()
            assert found['chat_webhook_deliveries_total{result="dead"}'] == 2
            assert found['chat_webhook_deliveries_total{result="ok"}'] == 0
            tried = {a.event["id"] for a in receiver.attempts}
            assert len(tried) == 2
            first_tries = len(receiver.attempts)
            assert first_tries >= 4  # retried before giving up

            listed = webhooks_command("list", "--redis-url", redis_url, cwd=str(tmp_path))
            assert listed.returncode == 0, listed.stderr
            assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted(tried)
            assert "HTTP 500" in listed.stdout
            await asyncio.sleep(1)
            assert len(receiver.attempts) == first_tries  # dead letters are not tried

            receiver.fail_until = 0
            replayed = webhooks_command("replay", "--redis-url", redis_url, cwd=str(tmp_path))
            assert replayed.returncode == 0, replayed.stderr
            assert "2 events replayed" in replayed.stdout
            await receiver.wait_for(lambda r: len(r.accepted) == 2, 15)
            async with asyncio.timeout(10):
                while (await metrics()).get("chat_webhook_dead_letters", 0) != 0:
                    await asyncio.sleep(0.2)
        again = webhooks_command("list", "--redis-url", redis_url, cwd=str(tmp_path))
        assert again.stdout == ""
    accepted = receiver.accepted
    assert {e["id"] for e in accepted} == tried
    assert [e["data"] for e in accepted] == posted
