"""The hub on its own, against a backend and connections in memory.

The hub's contract with Redis is the small ``Backend`` protocol and its
contract with SSE and WebSocket the ``Sink`` protocol, so the core's
ordering, fan-out, slow-consumer and presence rules are tested here with no
Redis and no sockets.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.common.metrics import Metrics
from server.core.close_reason import OVERFLOW, RELOAD
from server.core.hub import Closing, Hub
from server.core.ids import MessageId
from server.core.model import Event, Gap, Ping, Presence, PresenceDiff
from server.core.replay import REPLAY_PAGE

from .fakes import MemoryBackend, MemorySink, live, make_hub, message, settled, stored_after


async def test_a_joiner_hanging_up_does_not_cancel_the_others() -> None:
    backend = MemoryBackend()
    backend.release.clear()
    hub = make_hub(backend)
    first = asyncio.create_task(hub.subscribe("r", "u-1", None))
    second = asyncio.create_task(hub.subscribe("r", "u-2", None))
    await asyncio.sleep(0.01)
    first.cancel()
    backend.release.set()
    subscription = await asyncio.wait_for(second, 1)
    assert subscription.room.name == "r"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_backend_watches_a_room_from_its_newest_id_while_it_has_subscribers() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(1), message(2)]
    hub = make_hub(backend)
    a = await hub.subscribe("r", "u-1", None)
    b = await hub.subscribe("r", "u-2", None)
    assert backend.watched == {"r": (2, 0)}
    hub.unsubscribe(a)
    assert "r" in backend.watched
    hub.unsubscribe(b)
    assert backend.watched == {}


async def test_live_messages_are_written_to_every_connection_within_dispatch() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    sinks = [(await live(hub, f"u-{n}"))[1] for n in range(3)]
    # No await between dispatch and the check: nothing was left to a task.
    hub.dispatch("r", [message(1), message(2)])
    assert [sink.ids for sink in sinks] == [["1-0", "2-0"]] * 3
    # The very same encoded bytes for everyone.
    assert len({id(sink.events[0]) for sink in sinks}) == 1
    assert hub.metrics.value("chat_deliveries_total") == 6


async def test_a_message_dispatched_twice_is_written_once() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    _, sink = await live(hub)
    hub.dispatch("r", [message(1), message(2)])
    hub.dispatch("r", [message(2), message(1), message(3)])
    assert sink.ids == ["1-0", "2-0", "3-0"]


async def test_replay_and_live_overlap_is_sent_once_in_order() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 6)]
    hub = make_hub(backend)
    sub = await hub.subscribe("r", "u-1", (2, 0))
    # Live delivery, before the replay ran, of messages the replay also returns.
    hub.rooms["r"].cursor = (3, 0)
    backend.history["r"].append(message(6))
    hub.dispatch("r", [message(4), message(5), message(6)])
    sink = MemorySink()
    sub.attach(sink)
    await settled(sub)
    hub.dispatch("r", [message(7)])
    assert sink.ids == ["3-0", "4-0", "5-0", "6-0", "7-0"]


async def test_a_paused_connection_queues_and_catches_up_in_order_when_it_drains() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    slow_sub, slow = await live(hub, "u-0")
    _, fast = await live(hub, "u-1")
    slow.paused = True
    hub.dispatch("r", [message(n) for n in range(1, 11)])
    assert fast.ids == [f"{n}-0" for n in range(1, 11)]
    assert slow.ids == [] and not slow_sub.writable()
    slow.resume()
    await settled(slow_sub)
    hub.dispatch("r", [message(11)])
    assert slow.ids == [f"{n}-0" for n in range(1, 12)]


async def test_a_connection_that_falls_too_far_behind_is_cut_off() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend, limit=5)
    slow_sub, slow = await live(hub, "u-1")
    _, fast = await live(hub, "u-2")
    slow.paused = True
    hub.dispatch("r", [message(n) for n in range(1, 8)])
    assert slow.aborted and slow_sub.closed and slow_sub.close_reason == OVERFLOW
    assert slow_sub.done.done() and not slow_sub.queue
    assert fast.ids == [f"{n}-0" for n in range(1, 8)]
    assert hub.metrics.value("chat_slow_consumers_dropped_total") == 1


async def test_a_connection_that_stops_reading_during_a_replay_is_cut_off_having_read_a_page() -> (
    None
):
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 10 * REPLAY_PAGE)]
    hub = make_hub(backend, idle=0.2)
    sink = MemorySink()
    sink.pause_after = 10
    sub = await hub.subscribe("r", "u-1", (0, 0))
    sub.attach(sink)
    async with asyncio.timeout(2):
        await sub.done
    assert sink.aborted and sub.close_reason == OVERFLOW
    # One page at a time: the reader never ran ahead of the writes.
    assert backend.reads == 1
    assert len(sink.events) == 10


async def test_replays_beyond_the_workers_slots_wait_their_turn_and_each_gets_everything() -> None:
    backend = MemoryBackend()
    stored = 3 * REPLAY_PAGE
    backend.history["r"] = [message(n) for n in range(1, stored + 1)]
    backend.read_gate = asyncio.Event()
    hub = make_hub(backend, replays=2)
    subs = []
    for n in range(5):  # (each from its own id: replays from the same one share a read)
        sink = MemorySink()
        sub = await hub.subscribe("r", f"u-{n}", (n, 0))
        sub.attach(sink)
        subs.append((sub, sink, n))
    async with asyncio.timeout(2):
        while backend.reading < 2:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    # Two replays read at once; the three others wait for a slot.
    assert backend.reading == 2
    # A message stored meanwhile reaches every one of them once, after its replay.
    backend.history["r"].append(message(stored + 1))
    hub.dispatch("r", [message(stored + 1)])
    backend.read_gate.set()
    for sub, sink, since in subs:
        await settled(sub)
        assert sink.story == [f"{n}-0" for n in range(since + 1, stored + 2)]
    assert backend.most_reading == 2


async def test_replays_from_the_same_id_share_one_read_and_miss_nothing_dispatched_meanwhile() -> (
    None
):
    backend = MemoryBackend()
    stored = 10
    backend.history["r"] = [message(n) for n in range(1, stored + 1)]
    backend.read_gate = asyncio.Event()
    hub = make_hub(backend)
    subs = []
    for n in range(5):
        sink = MemorySink()
        sub = await hub.subscribe("r", f"u-{n}", (3, 0))
        sub.attach(sink)
        subs.append((sub, sink))
    async with asyncio.timeout(2):
        while backend.reading < 1:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    assert backend.reading == 1  # one read for the five
    # A message dispatched while the shared read is under way reaches each once.
    backend.history["r"].append(message(stored + 1))
    hub.dispatch("r", [message(stored + 1)])
    backend.read_gate.set()
    for sub, sink in subs:
        await settled(sub)
        assert sink.story == [f"{n}-0" for n in range(4, stored + 2)]
    # The cursor moved since that page was read: a replay from the same id now
    # reads afresh (the page lacks the newer message), and gets everything.
    reads = backend.reads
    late = MemorySink()
    sub = await hub.subscribe("r", "u-late", (3, 0))
    sub.attach(late)
    await settled(sub)
    assert late.story == [f"{n}-0" for n in range(4, stored + 2)]
    assert backend.reads == reads + 1


async def test_a_replay_whose_client_stops_reading_gives_its_slot_back_and_goes_on_later() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 3 * REPLAY_PAGE + 1)]
    backend.trim("r", 2 * REPLAY_PAGE)
    first = REPLAY_PAGE + 1
    everything = [f"gap {first}-0"] + [f"{n}-0" for n in range(first, 3 * REPLAY_PAGE + 1)]
    hub = make_hub(backend, replays=1)
    stalled = MemorySink()
    stalled.pause_after = 1  # takes the gap notice, not the message after it
    sub = await hub.subscribe("r", "u-1", (0, 0))
    sub.attach(stalled)
    # It stops reading twice: after the gap notice, then in the middle of a page.
    for pause_after in (REPLAY_PAGE // 2, None):
        async with asyncio.timeout(2):
            while not stalled.paused:
                await asyncio.sleep(0.001)
        # Its slot is free: another replay, the worker's only one, goes ahead.
        assert (await resumed(hub, (0, 0), "u-2")).story == everything
        stalled.pause_after = pause_after
        stalled.resume()
    await settled(sub)
    # It read on from the last message it took: the gap told once, each message once.
    assert stalled.story == everything
    assert not stalled.aborted


async def test_a_resume_from_the_newest_id_reads_nothing_and_takes_no_slot() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 6)]
    backend.read_gate = asyncio.Event()  # a read would wait for ever
    hub = make_hub(backend, replays=1)
    sink = await resumed(hub, (5, 0))
    hub.dispatch("r", [message(6)])
    assert sink.story == ["6-0"]
    assert backend.reads == 0


async def test_no_subscriptions_once_closing() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    existing = await hub.subscribe("r", "u-1", None)
    sink = MemorySink()
    existing.attach(sink)
    hub.close_all("shutdown")
    assert existing.closed and existing.close_reason == "shutdown"
    assert sink.closed_with == "shutdown" and existing.done.done()
    with pytest.raises(Closing):
        await hub.subscribe("r", "u-2", None)


async def test_closing_spread_out_closes_a_share_per_step_and_the_rest_keep_receiving() -> None:
    hub = make_hub(MemoryBackend())
    subs = [await live(hub, f"u-{n}") for n in range(40)]
    loop = asyncio.get_running_loop()
    closed_at: dict[int, float] = {}

    async def watch() -> None:
        while len(closed_at) < len(subs):
            for i, (sub, _) in enumerate(subs):
                if sub.closed:
                    closed_at.setdefault(i, loop.time())
            await asyncio.sleep(0.005)

    started = loop.time()
    watching = asyncio.create_task(watch())
    closing = asyncio.create_task(hub.close_spread(RELOAD, 0.4, asyncio.Event()))
    await asyncio.sleep(0.2)
    # Half-way: about half closed, with the reload's hint; the others still get messages.
    still_open = [sink for sub, sink in subs if not sub.closed]
    assert 10 <= len(still_open) <= 30 and hub.draining
    hub.dispatch("r", [message(1)])
    assert all(sink.ids == ["1-0"] for sink in still_open)
    await asyncio.wait_for(closing, 2)
    await asyncio.wait_for(watching, 1)
    assert {sink.closed_with for _, sink in subs} == {"reload"}
    assert max(closed_at.values()) - started >= 0.3
    assert not hub.closing  # (a stream that still comes in is closed with the rest at the end)


async def test_closing_spread_out_waits_while_the_accept_queue_is_crowded() -> None:
    hub = make_hub(MemoryBackend())
    subs = [await live(hub, f"u-{n}") for n in range(10)]
    crowded = True
    closing = asyncio.create_task(
        hub.close_spread(RELOAD, 0.1, asyncio.Event(), crowded=lambda: crowded, latest_s=5)
    )
    await asyncio.sleep(0.4)
    # The first share went at once; the next waits for the queue to empty.
    assert 0 < sum(sub.closed for sub, _ in subs) < 10
    crowded = False
    await asyncio.wait_for(closing, 1)
    assert all(sub.closed for sub, _ in subs)
    # Cut short: what is left goes to close_all.
    more = [await live(hub, f"v-{n}") for n in range(10)]
    cut_short = asyncio.Event()
    cut_short.set()
    await asyncio.wait_for(hub.close_spread(RELOAD, 5, cut_short), 1)
    assert 0 < sum(sub.closed for sub, _ in more) < 10


async def test_a_ping_waits_behind_queued_messages() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    sub, sink = await live(hub)
    sink.paused = True
    hub.dispatch("r", [message(1)])
    sub.deliver(Ping())
    sink.resume()
    await settled(sub)
    assert [type(e).__name__ for e in sink.events] == ["Message", "Ping"]


async def resumed(hub: Hub, since: MessageId, user_id: str = "u-1") -> MemorySink:
    """A connection to room ``r`` resuming from ``since``, once its replay is written."""
    sink = MemorySink()
    sub = await hub.subscribe("r", user_id, since)
    sub.attach(sink)
    await settled(sub)
    return sink


async def test_a_resume_from_before_the_retained_history_is_told_of_the_gap_first() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 11)]
    backend.trim("r", 5)  # 6-0 to 10-0 remain
    hub = make_hub(backend)
    retained = ["6-0", "7-0", "8-0", "9-0", "10-0"]
    assert (await resumed(hub, (3, 0))).story == ["gap 6-0", *retained]
    # The last id trimmed away: nothing after it is missing.
    assert (await resumed(hub, (5, 0))).story == retained
    assert (await resumed(hub, (7, 0))).story == retained[2:]
    # A client that saw nothing (0-0) is told that the history starts later.
    assert (await resumed(hub, (0, 0))).story == ["gap 6-0", *retained]
    # An id past the newest: nothing is missing.
    assert (await resumed(hub, (12, 0))).story == []
    # The wire forms the page reads.
    gap = Gap("6-0")
    assert gap.sse_frame == b'event: gap\ndata: {"first_id":"6-0"}\n\n'
    assert json.loads(gap.ws_frame) == {"type": "gap", "first_id": "6-0"}


async def test_a_resumed_connection_then_gets_live_messages_without_a_gap() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 11)]
    backend.trim("r", 3)
    hub = make_hub(backend)
    sink = await resumed(hub, (2, 0))
    backend.history["r"].append(message(11))
    hub.dispatch("r", [message(11)])
    assert sink.story == ["gap 8-0", "8-0", "9-0", "10-0", "11-0"]


async def test_messages_trimmed_while_a_replay_runs_are_a_gap_where_they_were() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [message(n) for n in range(1, 3 * REPLAY_PAGE + 1)]
    hub = make_hub(backend)

    def trim_after_the_first_page() -> None:
        if backend.reads == 2:
            backend.trim("r", REPLAY_PAGE)

    backend.before_read = trim_after_the_first_page
    sink = await resumed(hub, (0, 0))
    first_kept = 2 * REPLAY_PAGE + 1
    assert sink.story == (
        [f"{n}-0" for n in range(1, REPLAY_PAGE + 1)]
        + [f"gap {first_kept}-0"]
        + [f"{n}-0" for n in range(first_kept, 3 * REPLAY_PAGE + 1)]
    )


async def test_a_history_that_began_again_is_a_gap_on_resume_but_an_empty_one_is_not() -> None:
    backend = MemoryBackend()
    # The room expired (or Redis lost it) after the client's 5-0; 20-0 began it again.
    backend.history["r"] = [stored_after((0, 0), 20), message(21)]
    hub = make_hub(backend)
    assert (await resumed(hub, (5, 0))).story == ["gap 20-0", "20-0", "21-0"]
    assert (await resumed(hub, (0, 0))).story == ["20-0", "21-0"]

    # A room that holds nothing: nothing to replay, nothing missing; what
    # comes next is live, as for every other connection.
    backend.history["e"] = []
    sink = MemorySink()
    sub = await hub.subscribe("e", "u-1", (5, 0))
    sub.attach(sink)
    await settled(sub)
    hub.dispatch("e", [stored_after((0, 0), 30, "e")])
    assert sink.story == ["30-0"]


async def test_a_message_whose_predecessor_is_unknown_is_a_gap_on_resume() -> None:
    backend = MemoryBackend()
    backend.history["r"] = [stored_after(None, 8), message(9)]
    hub = make_hub(backend)
    assert (await resumed(hub, (7, 0))).story == ["gap 8-0", "8-0", "9-0"]
    assert (await resumed(hub, (0, 0))).story == ["gap 8-0", "8-0", "9-0"]


async def test_live_messages_after_a_hole_come_after_one_gap_notice_for_each_connection() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    fast_sub, fast = await live(hub, "u-1")
    slow_sub, slow = await live(hub, "u-2")
    hub.dispatch("r", [message(1)])
    slow.paused = True
    hub.dispatch("r", [message(2)])
    # 3-0 and 4-0 were trimmed before this worker read them.
    hub.dispatch("r", [message(5), message(6)])
    await settled(fast_sub)
    assert fast.story == ["1-0", "2-0", "gap 5-0", "5-0", "6-0"]
    slow.resume()
    await settled(slow_sub)
    hub.dispatch("r", [message(7)])
    assert slow.story == ["1-0", "2-0", "gap 5-0", "5-0", "6-0", "7-0"]
    assert fast.story[-1] == "7-0"
    # One encoding per worker.
    assert fast.of(Gap)[0] is slow.of(Gap)[0]


def users(*names: str) -> list[dict[str, str]]:
    return [{"user_id": f"u-{n}", "name": n} for n in names]


def body(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.ws_frame)
    return data


async def test_presence_is_a_snapshot_then_only_what_changed() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    sub, first = await live(hub, "u-a")
    await hub.set_presence("r", users("a"), 1)
    late_sub, late = await live(hub, "u-b")
    await hub.set_presence("r", users("a", "b"), 2)
    await hub.set_presence("r", users("a", "b"), 2)  # nothing changed: nothing sent
    await hub.set_presence("r", users("b"), 1)
    for s in (sub, late_sub):
        await settled(s)
    assert [body(e) for e in first.events] == [
        {"type": "presence", "online": users("a"), "count": 1},
        {"type": "presence_diff", "joined": users("b"), "left": [], "count": 2},
        {"type": "presence_diff", "joined": [], "left": users("a"), "count": 1},
    ]
    # The late subscriber starts from the snapshot it joined at.
    assert [body(e) for e in late.events] == [
        {"type": "presence", "online": users("a"), "count": 1},
        {"type": "presence_diff", "joined": users("b"), "left": [], "count": 2},
        {"type": "presence_diff", "joined": [], "left": users("a"), "count": 1},
    ]


async def test_big_rooms_carry_counts_only_and_crossing_the_limit_sends_a_snapshot() -> None:
    backend = MemoryBackend()
    hub = make_hub(backend)
    sub, sink = await live(hub, "u-a")
    await hub.set_presence("r", users("a", "b"), 2)
    await hub.set_presence("r", None, 300)
    await hub.set_presence("r", None, 301)
    await hub.set_presence("r", users("a"), 1)
    await settled(sub)
    assert [body(e) for e in sink.events] == [
        {"type": "presence", "online": users("a", "b"), "count": 2},
        {"type": "presence", "count": 300},
        {"type": "presence_diff", "joined": [], "left": [], "count": 301},
        {"type": "presence", "online": users("a"), "count": 1},
    ]
    assert isinstance(sink.events[1], Presence) and isinstance(sink.events[2], PresenceDiff)


async def test_the_loop_watch_sees_and_logs_a_stalled_loop(caplog: Any) -> None:
    import logging
    import time

    from server.web.heartbeat import LoopWatch

    metrics = Metrics()
    watch = LoopWatch(metrics, every_s=0.01, warn_s=0.1)
    watch.start()
    try:
        await asyncio.sleep(0.05)
        assert metrics.loop_stall_max.seconds < 0.1
        with caplog.at_level(logging.WARNING, logger="server.web.heartbeat"):
            time.sleep(0.2)  # a callback that holds the loop
            await asyncio.sleep(0.05)
    finally:
        watch.stop()
    assert metrics.loop_stall_max.seconds >= 0.15
    assert "event loop stalled for" in caplog.text


async def test_the_loop_watch_times_full_garbage_collections() -> None:
    import gc

    from server.web.heartbeat import LoopWatch

    metrics = Metrics()
    watch = LoopWatch(metrics)
    watch.start()
    try:
        gc.collect()
    finally:
        watch.stop()
    assert metrics.gc_pause_max.seconds > 0
    assert watch._on_gc not in gc.callbacks


async def test_a_worker_s_start_heap_is_frozen_and_young_collections_are_rarer() -> None:
    import gc

    from server.web.heartbeat import YOUNG_OBJECTS, FrozenSurvivors

    before = gc.get_threshold()
    frozen = FrozenSurvivors(Metrics())
    frozen.start()
    try:
        # No collection has run: the heap of the start is out of every one already.
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_OBJECTS, *before[1:])
    finally:
        frozen.stop()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


async def test_survivors_of_a_full_collection_are_frozen_until_enough_connections_close() -> None:
    import gc

    from server.web.heartbeat import FrozenSurvivors

    metrics = Metrics()
    metrics.connections["ws"] = 100
    frozen = FrozenSurvivors(metrics, min_closed=10)
    frozen.start()
    try:
        gc.collect()
        await asyncio.sleep(0)  # the freeze runs on the loop, after the collection
        assert gc.get_freeze_count() > 0
        metrics.closed += 9
        frozen.check()
        assert gc.get_freeze_count() > 0  # fewer than min_closed closed
        metrics.closed += 15
        frozen.check()
        assert gc.get_freeze_count() > 0  # fewer than a quarter of the 100 open
        metrics.closed += 1
        frozen.check()
        assert gc.get_freeze_count() == 0
    finally:
        frozen.stop()
    assert gc.get_freeze_count() == 0


async def test_a_worker_counts_its_writes_of_counts_over_all_its_counted_rooms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from server.core import presence

    # Two counted rooms of 100 local subscribers each, at 100 count writes a
    # second for the worker: each room's count every 2 s at most (1 s each
    # if the budget were a room's).
    monkeypatch.setattr(presence, "COUNT_WRITES_PER_S", 100)
    hub = make_hub(MemoryBackend())
    for room in ("a", "b"):
        for n in range(100):
            (await hub.subscribe(room, f"u-{n}", None)).attach(MemorySink())
    reads: dict[str, list[float]] = {"a": [], "b": []}
    read = asyncio.Event()

    async def reader(rooms: list[str], list_max: int) -> dict[str, tuple[None, int]]:
        for room in rooms:
            reads[room].append(time.monotonic())
        read.set()
        return {room: (None, 300 + len(reads[room])) for room in rooms}

    announcer = presence.Announcer(hub, reader, list_max=200, failures=(OSError,))
    try:
        announcer.announce_soon("a")
        announcer.announce_soon("b")
        async with asyncio.timeout(5):
            while not (reads["a"] and reads["b"]):
                await read.wait()
                read.clear()
            await asyncio.sleep(0.1)  # (the counts are told)
            announcer.announce_soon("a")
            while len(reads["a"]) < 2:
                await read.wait()
                read.clear()
    finally:
        await announcer.close()
    assert reads["a"][1] - reads["a"][0] >= 1.9, reads


async def test_a_worker_holding_many_of_a_counted_room_tells_its_counts_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from server.core import presence

    # 200 local subscribers at 100 count writes a second: a count every 2 s at most.
    monkeypatch.setattr(presence, "COUNT_WRITES_PER_S", 100)
    hub = make_hub(MemoryBackend())
    for n in range(200):
        await live(hub, f"u-{n}")
    reads: list[float] = []
    read = asyncio.Event()

    async def reader(rooms: list[str], list_max: int) -> dict[str, tuple[None, int]]:
        reads.append(time.monotonic())
        read.set()
        return {room: (None, 300 + len(reads)) for room in rooms}

    announcer = presence.Announcer(hub, reader, list_max=200, failures=(OSError,))
    try:
        announcer.announce_soon("r")
        async with asyncio.timeout(5):
            await read.wait()
            read.clear()
            await asyncio.sleep(0.1)  # (the count is told)
            announcer.announce_soon("r")
            await read.wait()
    finally:
        await announcer.close()
    assert reads[1] - reads[0] >= 1.9
