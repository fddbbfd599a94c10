"""SSE and WebSocket in-process: live delivery, resume without gap or duplicate, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest

from harness.chat import id_key

from .support import assert_in_order_once, metric, sse_collector, wait_closed, ws_collector

pytestmark = pytest.mark.openapi

ROOM = "/api/rooms/general"


async def post(client: Any, text: str, room: str = ROOM) -> dict[str, Any]:
    resp = await client.post(f"{room}/messages", json={"text": text})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["message"]  # type: ignore[no-any-return]


async def test_sse_delivers_messages_once_in_order(client: Any) -> None:
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as sse:
        sent = [await post(client, f"m{i}") for i in range(20)]
        await sse.wait_for(lambda c: len(c.messages) >= 20)
        assert sse.messages == sent


async def test_ws_delivers_messages_and_acks_its_own(client: Any) -> None:
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_json({"type": "message", "text": "hello", "ref": "r1"})
        frames = []
        async with asyncio.timeout(5):
            # The ack and the live copy may come in either order.
            while not {"ack", "message"} <= {f["type"] for f in frames}:
                frames.append(await ws.receive_json())
        ack = next(f for f in frames if f["type"] == "ack")
        live = next(f for f in frames if f["type"] == "message")
        assert ack["ref"] == "r1" and ack["message"]["text"] == "hello"
        assert live["message"] == ack["message"]


async def test_the_name_has_one_home_and_a_rename_reaches_an_open_websocket(
    client: Any, redis: Any
) -> None:
    me = await (await client.get("/api/session")).json()

    async def acked(ws: Any, ref: int) -> dict[str, Any]:
        await ws.send_json({"type": "message", "text": f"m{ref}", "ref": ref})
        async with asyncio.timeout(5):
            while (frame := await ws.receive_json())["type"] != "ack" or frame["ref"] != ref:
                pass
        return dict(frame["message"])

    async with client.ws_connect(f"{ROOM}/ws") as ws:
        assert (await acked(ws, 1))["name"] == me["name"]
        # Renamed on another request: the open connection's next message has it.
        assert (await client.put("/api/session", json={"name": "Renamed"})).status == 200
        assert (await acked(ws, 2))["name"] == "Renamed"
    # The session holds the user id only; the name is in the user's key.
    (session_key,) = [key async for key in redis.scan_iter("chat_session_*")]
    session = json.loads(await redis.get(session_key))["session"]
    assert session["user_id"] == me["user_id"] and "name" not in session
    assert await redis.get(f"chat:user:{{{me['user_id']}}}:name") == "Renamed"
    # And it lives as long as the session.
    assert (
        abs(await redis.ttl(f"chat:user:{{{me['user_id']}}}:name") - await redis.ttl(session_key))
        <= 2
    )


@pytest.mark.parametrize("how", ["header", "query"])
async def test_sse_resume_replays_exactly_what_was_missed(client: Any, how: str) -> None:
    first = [await post(client, f"before{i}") for i in range(5)]
    last_seen = first[2]["id"]
    kwargs: dict[str, Any] = {}
    url = client.make_url(f"{ROOM}/events")
    if how == "header":
        kwargs["headers"] = {"Last-Event-ID": last_seen}
    else:
        url = url.with_query(last_event_id=last_seen)
    async with sse_collector(client.session, url, **kwargs) as sse:
        later = [await post(client, f"after{i}") for i in range(5)]
        await sse.wait_for(lambda c: len(c.messages) >= 7)
        assert sse.ids == [m["id"] for m in first[3:] + later]


async def test_ws_resume_with_since(client: Any) -> None:
    first = [await post(client, f"before{i}") for i in range(3)]
    async with ws_collector(
        client.session, client.make_url(f"{ROOM}/ws?since={first[0]['id']}")
    ) as ws:
        later = await post(client, "after")
        await ws.wait_for(lambda c: len(c.messages) >= 3)
        assert ws.ids == [first[1]["id"], first[2]["id"], later["id"]]


async def test_resume_under_concurrent_posting_has_no_gap_or_duplicate(client: Any) -> None:
    """Reconnect again and again while another task posts: every message exactly once."""
    stop = asyncio.Event()
    sent: list[str] = []

    async def sender() -> None:
        i = 0
        while not stop.is_set():
            sent.append((await post(client, f"n{i}"))["id"])
            i += 1

    seen: list[str] = []
    async with asyncio.TaskGroup() as group:
        group.create_task(sender())
        for _ in range(8):
            # The first connection asks for everything: the sender is already running.
            url = client.make_url(f"{ROOM}/events").with_query(
                last_event_id=seen[-1] if seen else "0-0"
            )
            async with sse_collector(client.session, url) as sse:
                target = len(sent) + 3
                await sse.wait_for(lambda c, t=target: len(seen) + len(c.messages) >= t)
                seen.extend(sse.ids)
        stop.set()
    async with sse_collector(
        client.session, client.make_url(f"{ROOM}/events").with_query(last_event_id=seen[-1])
    ) as sse:
        await sse.wait_for(lambda c: len(seen) + len(c.messages) >= len(sent))
        seen.extend(sse.ids)
    assert_in_order_once(seen)
    assert seen == sent


def resume(client: Any, transport: str, since: str) -> Any:
    """A collector on ROOM resuming from ``since``: SSE by header, WebSocket by ?since=."""
    if transport == "sse":
        url = client.make_url(f"{ROOM}/events")
        return sse_collector(client.session, url, headers={"Last-Event-ID": since})
    return ws_collector(client.session, client.make_url(f"{ROOM}/ws").with_query(since=since))


# A client, the ids it posted, and the ids the capped history still holds.
Trimmed = tuple[Any, list[str], list[str]]


@pytest.fixture
async def trimmed(make_app: Any, aiohttp_client: Any) -> Trimmed:
    """A client of an app whose rooms keep about ten messages, which posted until the
    capped history dropped its oldest: (the client, ids posted, ids retained)."""
    client = await aiohttp_client(
        await make_app(history_len=10), server_kwargs={"handler_cancellation": True}
    )
    posted: list[str] = []
    for _ in range(20):
        posted += [(await post(client, f"m{len(posted)}"))["id"] for _ in range(50)]
        page = await (await client.get(f"{ROOM}/messages", params={"limit": 200})).json()
        retained = [m["id"] for m in page["messages"]]
        if retained[0] != posted[0]:
            assert posted[-len(retained) :] == retained
            return client, posted, retained
    raise AssertionError("the history was never trimmed")


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_resume_from_trimmed_history_is_told_of_the_gap_then_gets_all_retained_once(
    trimmed: Trimmed, transport: str
) -> None:
    client, posted, retained = trimmed
    # Messages after the client's id were trimmed away: it must be told. So is
    # a client that saw nothing (0-0): the history no longer starts at the
    # room's first message.
    for since in (posted[0], "0-0"):
        async with resume(client, transport, since) as stream:
            later = await post(client, f"live after {since}")
            await stream.wait_for(lambda c, i=later["id"]: i in c.ids)
            assert stream.gaps == [(0, {"first_id": retained[0]})], since
            assert stream.ids == [*retained, later["id"]], since
        retained.append(later["id"])


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_resume_whose_successors_are_all_retained_gets_no_gap(
    trimmed: Trimmed, transport: str
) -> None:
    client, posted, retained = trimmed
    last_trimmed = posted[posted.index(retained[0]) - 1]
    # The last id trimmed away (nothing after it is missing), one still
    # retained, and the newest.
    for since in (last_trimmed, retained[5], retained[-1]):
        expected = [i for i in retained if id_key(i) > id_key(since)]
        async with resume(client, transport, since) as stream:
            later = await post(client, f"live after {since}")
            await stream.wait_for(lambda c, i=later["id"]: i in c.ids)
            assert stream.gaps == [], since
            assert stream.ids == [*expected, later["id"]], since
        retained.append(later["id"])


async def test_history_stored_without_predecessors_is_judged_as_exactly_as_redis_allows(
    client: Any, redis: Any
) -> None:
    """Entries written before each kept its predecessor: a Redis that still
    knows the newest id trimmed away tells; one that cannot tell (6.2, or
    7.0 after trimming) has the client told of a gap."""
    from server.store.keys import stream_key

    key = stream_key("general")
    ids = [
        await redis.xadd(key, {"u": "u-1", "n": "n", "t": f"old{i}", "ts": "1"}, maxlen=10)
        for i in range(150)
    ]
    retained = [i for i, _ in await redis.xrange(key)]
    assert retained[0] != ids[0]
    last_trimmed = ids[ids.index(retained[0]) - 1]
    # Redis 7 keeps the newest id deleted, but 7.0 only counts XDEL there,
    # not trimming: where it does not know, the client is told of a gap.
    info = await redis.xinfo_stream(key)
    exact = info.get("max-deleted-entry-id", "0-0") not in ("0-0", b"0-0")
    for since, gap in ((ids[0], True), (last_trimmed, not exact), (retained[3], False)):
        async with resume(client, "sse", since) as stream:
            later = await post(client, f"live after {since}")
            await stream.wait_for(lambda c, i=later["id"]: i in c.ids)
            assert stream.gaps == ([(0, {"first_id": retained[0]})] if gap else []), since
        retained.append(later["id"])


async def test_rooms_are_separate(client: Any) -> None:
    async with sse_collector(client.session, client.make_url("/api/rooms/lobby/events")) as lobby:
        await post(client, "general only")
        mine = await post(client, "lobby only", room="/api/rooms/lobby")
        await lobby.wait_for(lambda c: len(c.messages) >= 1)
        await asyncio.sleep(0.1)  # a stray message would arrive by now
        assert lobby.ids == [mine["id"]]


async def test_presence_lists_users_with_open_streams(client: Any, aiohttp_client: Any) -> None:
    other = await aiohttp_client(client.server)
    me = await (await client.get("/api/session")).json()
    them = await (await other.get("/api/session")).json()
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as mine:
        await mine.wait_for(lambda c: any(me["user_id"] in str(p) for p in c.presence))
        async with ws_collector(other.session, other.make_url(f"{ROOM}/ws")):
            both = {me["user_id"], them["user_id"]}
            await mine.wait_for(
                lambda c: bool(c.presence) and {u["user_id"] for u in c.presence[-1]} == both
            )
        # The other user left: gone within a heartbeat or two.
        await mine.wait_for(
            lambda c: {u["user_id"] for u in c.presence[-1]} == {me["user_id"]}, timeout=3
        )
    assert {u["name"] for u in mine.presence[-2]} == {me["name"], them["name"]}


async def test_a_join_and_a_leave_reach_the_others_as_changes(
    client: Any, aiohttp_client: Any
) -> None:
    other = await aiohttp_client(client.server)
    me, them = [
        {key: session[key] for key in ("user_id", "name")}  # what presence lists of a user
        for session in [
            await (await client.get("/api/session")).json(),
            await (await other.get("/api/session")).json(),
        ]
    ]
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as mine:
        await mine.wait_for(lambda c: c.count == 1)
        async with ws_collector(other.session, other.make_url(f"{ROOM}/ws")) as theirs:
            await mine.wait_for(lambda c: c.count == 2)
            await theirs.wait_for(lambda c: c.count == 2)
            assert [u["user_id"] for u in theirs.presence[-1]] == sorted(
                [me["user_id"], them["user_id"]]
            )
        await mine.wait_for(lambda c: c.count == 1)
    assert mine.presence_events == [
        ("presence", {"online": [me], "count": 1}),
        ("presence_diff", {"joined": [them], "left": [], "count": 2}),
        ("presence_diff", {"joined": [], "left": [them], "count": 1}),
    ]


async def test_a_rename_reaches_the_others_as_a_change(make_app: Any, aiohttp_client: Any) -> None:
    # A heartbeat that never ticks: the change must come from the rename itself.
    app = await make_app(heartbeat_s=3600)
    mine = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    other = await aiohttp_client(mine.server)
    them = await (await other.get("/api/session")).json()
    async with (
        sse_collector(mine.session, mine.make_url(f"{ROOM}/events")) as watcher,
        ws_collector(other.session, other.make_url(f"{ROOM}/ws")),
    ):
        await watcher.wait_for(lambda c: c.count == 2)
        resp = await other.put("/api/session", json={"name": "Renamed"})
        assert resp.status == 200
        renamed = {"user_id": them["user_id"], "name": "Renamed"}
        await watcher.wait_for(lambda c: renamed in c.presence[-1], timeout=3)
    assert watcher.presence_events[-1] == (
        "presence_diff",
        {"joined": [renamed], "left": [], "count": 2},
    )


async def test_a_room_over_presence_list_max_sends_counts_only(
    make_app: Any, aiohttp_client: Any
) -> None:
    app = await make_app(presence_list_max=1)
    first = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    second = await aiohttp_client(first.server)
    async with (
        sse_collector(first.session, first.make_url(f"{ROOM}/events")) as a,
        ws_collector(second.session, second.make_url(f"{ROOM}/ws")) as b,
    ):
        await a.wait_for(lambda c: c.count == 2)
        await b.wait_for(lambda c: c.count == 2)
    for collector in (a, b):
        assert collector.presence_events
        for kind, data in collector.presence_events:
            assert "online" not in data or len(data["online"]) <= 1, (kind, data)
            assert not data.get("joined") and not data.get("left"), (kind, data)
    # Two users: over the limit of one, so the last snapshot had no list.
    assert any(
        kind == "presence" and "online" not in data
        for kind, data in a.presence_events + b.presence_events
    )


async def test_online_pages_through_a_room_in_user_id_order(
    client: Any, aiohttp_client: Any
) -> None:
    users = [client] + [await aiohttp_client(client.server) for _ in range(4)]
    ids = sorted([(await (await u.get("/api/session")).json())["user_id"] for u in users])
    async with contextlib.AsyncExitStack() as stack:
        for user in users:
            await stack.enter_async_context(
                sse_collector(user.session, user.make_url(f"{ROOM}/events"))
            )
        seen: list[str] = []
        after = ""
        async with asyncio.timeout(5):
            while True:
                resp = await client.get(f"{ROOM}/online", params={"limit": 2, "after": after})
                assert resp.status == 200
                page = await resp.json()
                assert page["count"] == 5
                seen += [u["user_id"] for u in page["online"]]
                if len(page["online"]) < 2:
                    break
                after = seen[-1]
        assert seen == ids
    for bad in ({"limit": "0"}, {"limit": "x"}, {"after": "<script>"}):
        resp = await client.get(f"{ROOM}/online", params=bad)
        assert resp.status == 400, bad


async def test_sse_without_session_gets_one_and_keeps_it(client: Any) -> None:
    async with client.get(f"{ROOM}/events") as resp:
        assert resp.status == 200
        assert "chat_session" in resp.cookies
    me = await (await client.get("/api/session")).json()
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as sse:
        await sse.wait_for(lambda c: bool(c.presence))
        assert [u["user_id"] for u in sse.presence[-1]] == [me["user_id"]]


@pytest.mark.parametrize("value", ["abc", "1-2-3", "-1", "123", "9" * 30, "18446744073709551616-1"])
async def test_bad_resume_ids_get_400(client: Any, value: str) -> None:
    resp = await client.get(f"{ROOM}/events", headers={"Last-Event-ID": value})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"
    resp = await client.get(f"{ROOM}/ws", params={"since": value})
    assert resp.status == 400


async def test_plain_get_on_ws_endpoint_gets_400(client: Any) -> None:
    resp = await client.get(f"{ROOM}/ws")
    assert resp.status == 400
    assert "error" in await resp.json()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"type": "shout", "text": "x"}', "unknown frame type"),
        ('{"type": "message"}', "missing 'text'"),
        ('{"type": "message", "text": "   "}', "empty"),
        ('{"type": "message", "text": 7, "ref": "r"}', "string"),
        ('{"type": "message", "text": "x", "ref": {"a": 1}}', "ref"),
        ("[" * 10000, "not valid JSON"),
        ('{"type": "message", "text": "x", "ref": NaN}', "not valid JSON"),
    ],
)
async def test_ws_bad_frames_get_error_frames_and_stay_open(
    client: Any, frame: str, message: str
) -> None:
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_str(frame)
        async with asyncio.timeout(5):
            while (reply := await ws.receive_json())["type"] != "error":
                pass
        assert message in reply["error"]["message"]
        assert set(reply["error"]) >= {"code", "message"}
        # Still open and working.
        await ws.send_json({"type": "message", "text": "still here", "ref": 2})
        async with asyncio.timeout(5):
            while (reply := await ws.receive_json())["type"] != "ack":
                pass
        assert reply["ref"] == 2
    assert (await (await client.get(f"{ROOM}/messages")).json())["messages"][-1][
        "text"
    ] == "still here"


async def test_ws_too_long_text_gets_413_error_frame(client: Any) -> None:
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_json({"type": "message", "text": "x" * 2001, "ref": "long"})
        async with asyncio.timeout(5):
            while (reply := await ws.receive_json())["type"] != "error":
                pass
        assert reply["ref"] == "long" and reply["error"]["code"] == "too_large"


async def test_ws_binary_frame_closes_1003(client: Any) -> None:
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_bytes(b"\x00\x01")
        assert await wait_closed(ws) == 1003


async def test_ws_oversize_frame_closes_1009(client: Any) -> None:
    async with client.ws_connect(f"{ROOM}/ws") as ws:
        await ws.send_str(json.dumps({"type": "message", "text": "x" * 70_000}))
        assert await wait_closed(ws) == 1009
    assert (await (await client.get(f"{ROOM}/messages")).json())["messages"] == []


async def test_stream_limit_per_session(make_app: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(await make_app(streams_per_session=2))
    await client.get("/api/session")
    url = client.make_url(f"{ROOM}/events")
    async with sse_collector(client.session, url), sse_collector(client.session, url):
        resp = await client.get(f"{ROOM}/events")
        assert resp.status == 429
        assert (await resp.json())["error"]["code"] == "too_many_streams"
        assert int(resp.headers["Retry-After"]) >= 1
    # Closed streams free their slots.
    async with asyncio.timeout(5):
        while True:
            async with client.get(f"{ROOM}/events") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)


async def test_slow_consumer_is_cut_off_and_others_get_everything(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(
        await make_app(send_buffer_messages=50, rate_limit_burst=10_000, rate_limit_per_s=10_000),
        server_kwargs={"handler_cancellation": True},
    )
    app = client.server.app
    from server.web import state as keys

    hub = app[keys.HUB]
    # A consumer whose subscription we never read: its buffer overflows.
    subscription = await hub.subscribe("general", "u-slow", None)
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as fast:
        sent = [await post(client, f"x{i}") for i in range(120)]
        await fast.wait_for(lambda c: len(c.messages) >= 120)
        assert fast.ids == [m["id"] for m in sent]
    assert subscription.close_reason == "overflow" and not subscription.queue
    assert subscription.done.done()
    hub.unsubscribe(subscription)


async def test_heartbeat_closes_a_websocket_whose_client_stopped_answering(
    make_app: Any, aiohttp_client: Any
) -> None:
    import aiotools

    from server.web import state as keys

    app = await make_app(heartbeat_s=0.1, idle_timeout_s=0.5)
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    timer = aiotools.create_timer(app[keys.HEARTBEAT].tick, 0.1)
    try:
        # autoping=False: this client never answers the server's pings.
        async with client.ws_connect(f"{ROOM}/ws", autoping=False) as ws:
            started = asyncio.get_running_loop().time()
            pings = 0
            async with asyncio.timeout(5):
                while (msg := await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    pings += msg.type == aiohttp.WSMsgType.PING
            elapsed = asyncio.get_running_loop().time() - started
        assert pings >= 2
        assert 0.5 <= elapsed < 2
        # A client that answers stays connected through the same interval.
        async with client.ws_connect(f"{ROOM}/ws") as ws:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.2):
                    while True:
                        msg = await ws.receive()
                        assert msg.type == aiohttp.WSMsgType.TEXT, msg
            assert not ws.closed
    finally:
        await aiotools.cancel_and_wait(timer)


async def test_metrics_count_connections_messages_and_deliveries(client: Any) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert metric(await resp.text(), "chat_messages_published_total") == 0
    async with sse_collector(client.session, client.make_url(f"{ROOM}/events")) as sse:
        for i in range(3):
            await post(client, f"m{i}")
        await sse.wait_for(lambda c: len(c.messages) == 3)
        text = await (await client.get("/metrics")).text()
        assert metric(text, 'chat_connections{transport="sse"}') == 1
        assert metric(text, 'chat_connections{transport="ws"}') == 0
        assert metric(text, "chat_messages_published_total") == 3
        assert metric(text, "chat_deliveries_total") == 3
        assert metric(text, "chat_slow_consumers_dropped_total") == 0
        assert metric(text, 'chat_connections_opened_total{transport="sse"}') == 1
        assert metric(text, "chat_publish_latency_seconds_count") == 3
        assert metric(text, "chat_delivery_latency_seconds_count") == 3
        assert 'chat_worker_up{worker="0"} 1.0' in text
    async with asyncio.timeout(5):
        while metric(
            await (await client.get("/metrics")).text(), 'chat_connections{transport="sse"}'
        ):
            await asyncio.sleep(0.02)


async def test_a_metrics_token_keeps_metrics_private(make_app: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(await make_app(metrics_token="s3cret-token"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status == 200
    assert metric(await resp.text(), "chat_messages_published_total") == 0


async def test_many_streams_opening_at_once_all_succeed(client: Any) -> None:
    """More concurrent Redis work than the pool has connections: wait, never 503."""
    url = client.make_url(f"{ROOM}/events")

    async def open_one() -> int:
        # A session per stream (no cookie), as many visitors arriving at once.
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            status = resp.status
            if status == 200:
                await resp.content.readline()
            return status

    statuses = await asyncio.gather(*(open_one() for _ in range(250)))
    assert statuses.count(200) == 250, sorted(set(statuses))


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_streams_closed_one_after_another_free_their_slots(
    make_app: Any, aiohttp_client: Any, kind: str
) -> None:
    """The client hangs up as soon as it closed (aiohttp then cancels the
    handler, which is still unregistering the stream): the slot is freed
    all the same, so a session can open and close streams without end."""
    client = await aiohttp_client(
        await make_app(streams_per_session=2), server_kwargs={"handler_cancellation": True}
    )
    await client.get("/api/session")
    for _ in range(8):
        if kind == "ws":
            ws = await client.ws_connect(f"{ROOM}/ws")
            await ws.close()
        else:
            resp = await client.get(f"{ROOM}/events")
            assert resp.status == 200, await resp.text()
            await resp.content.readline()  # (the stream is open)
            resp.close()
