"""A real browser: headless Chromium (Debian's, driven by Playwright) chatting with itself.

Two pages in separate browser contexts (separate cookies, so separate sessions and
users), whose event streams are served by different workers, each see the other's
messages appear live, see the history on load, see each other online, render markup
as text, and log no console errors or warnings. And two pages keep chatting, with
nothing lost or shown twice, through a SIGHUP reload and a worker killed with SIGKILL.
Presence reaches the pages as one snapshot, then changes (a join, a rename, a leave);
rooms over ``presence_list_max`` show a count and no list. Every name shows with its
user's tag, so namesakes look different, and a name cannot reorder what follows it.
A page that comes back after the capped history dropped what it missed says so, where
the messages were.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from playwright.sync_api import expect

from harness.chat import id_key
from server.store.keys import name_key

from .browser import (
    EVENTS_PATH,
    PAGE_LOAD_MS,
    WAIT_MS,
    WS_PATH,
    Tab,
    expect_history_loaded,
    open_tab,
    post_message,
    rendered_ids,
    say,
    send,
    stored_messages,
    wait_for_message,
)
from .support import ServerProcess, run_in_thread, worker_pids

pytestmark = pytest.mark.browser

DIFFERENT_WORKER_TRIES = 30
DIFFERENT_WORKER_DEADLINE_S = 25.0
HEARTBEAT_S = 0.5  # what tests.support gives the server
PRESENCE_WAIT_MS = 10_000  # a page closing is noticed by its worker, then announced
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.mark.timeout(90)
def test_two_browser_pages_on_different_workers_chat(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    # History that exists before either page opens.
    earlier = post_message(chat_server, "posted before the pages opened")

    a = open_tab("A", browser, chat_server.url, problems)
    tabs.append(a)

    # The kernel picks which worker accepts a connection; each context has
    # its own connection pool, so open fresh contexts until B's event
    # stream lands on another worker than A's.
    deadline = time.monotonic() + DIFFERENT_WORKER_DEADLINE_S
    seen: list[str] = []
    b: Tab | None = None
    for _ in range(DIFFERENT_WORKER_TRIES):
        candidate = open_tab("B", browser, chat_server.url, problems)
        seen.append(candidate.events_worker)
        if candidate.events_worker != a.events_worker:
            b = candidate
            break
        candidate.context.close()
        if time.monotonic() > deadline:
            break
        # Which worker wins the accept is sticky when tries keep the same
        # rhythm as the workers' heartbeats; a random pause breaks it.
        time.sleep(random.uniform(0, HEARTBEAT_S))
    if b is None:
        pytest.fail(
            f"page B's event stream never landed on a worker other than page A's "
            f"(worker {a.events_worker}) in {len(seen)} tries: {seen}\n{chat_server.log()}"
        )
    tabs.append(b)

    for tab in (a, b):
        tab.expect_live()
        # History on load.
        expect_history_loaded(tab, earlier)

    a_id, b_id = a.user_id(), b.user_id()
    assert a_id != b_id, "separate contexts must be separate users"

    # Live messages both ways, across workers.
    say(a, b, "hello from A")
    say(b, a, "hi A, B here")

    # Each sees both online, and the count (presence is refreshed every heartbeat).
    for tab in (a, b):
        tab.expect_online([a_id, b_id], 2)

    # Markup is shown as typed, never run.
    send(a, XSS)
    for tab in (b, a):
        wait_for_message(tab, XSS)
        assert tab.page.locator("#messages img").count() == 0
        assert tab.page.evaluate("typeof window.__xss") == "undefined"

    # Both pages show the same messages, in the same order, each once.
    ids_a, ids_b = rendered_ids(a), rendered_ids(b)
    assert ids_a == ids_b
    assert len(ids_a) == len(set(ids_a)) == 4
    for tab in (a, b):
        tab.expect_live()
    # Neither stream was dropped and reopened (perhaps on another worker) meanwhile.
    assert a.streams == [a.events_worker]
    assert b.streams == [b.events_worker]

    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- a real deployment's events

DISRUPTION_WAIT_S = 10.0  # a reload or a replacement, plus the page's backoff (at most 2 s)
RELOAD_DEADLINE_S = 5.0  # SPEC section 4: streams are back on new workers within 3 s
REPLACEMENT_DEADLINE_S = 3.0  # SPEC section 4: a dead worker is replaced within 2 s
PACE_S = 0.15  # between the posts made while the server is disrupted

# Records every change of the connection state, to prove that a page left
# "live" and came back by itself (not merely that it reads "live" now).
WATCH_CONN_STATE = """() => {
  const el = document.getElementById('conn-state');
  window.__connStates = [];
  new MutationObserver(() => window.__connStates.push(el.dataset.state))
    .observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""


@dataclass
class Watch:
    """What one tab logged, structured, and the worker pid of every events stream it opened."""

    tab: Tab
    console: list[dict[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    stream_pids: list[int] = field(default_factory=list)  # X-Chat-Pid of each events stream

    def __post_init__(self) -> None:
        page = self.tab.page
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("response", self._on_response)
        page.evaluate(WATCH_CONN_STATE)

    def _on_console(self, msg: Any) -> None:
        if msg.type in ("error", "warning"):
            url = str((msg.location or {}).get("url", ""))
            self.console.append({"type": msg.type, "text": msg.text, "url": url})

    def _on_response(self, response: Any) -> None:
        if EVENTS_PATH in response.url:
            self.stream_pids.append(int(response.header_value("x-chat-pid") or 0))

    def conn_states(self) -> list[str]:
        states: list[str] = self.tab.page.evaluate("window.__connStates")
        return states

    def reset_conn_states(self) -> None:
        self.tab.page.evaluate("window.__connStates = []")

    def wait_until(self, condition: Any, what: str, timeout_s: float = DISRUPTION_WAIT_S) -> None:
        """Poll ``condition`` while letting Playwright deliver the page's events."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"page {self.tab.name}: {what} within {timeout_s} s")
            self.tab.page.wait_for_timeout(50)

    def expect_each_once_in_order(self, ids: list[str]) -> None:
        for message_id in ids:
            expect(
                self.tab.page.locator(f'#messages .message[data-id="{message_id}"]'),
                f"page {self.tab.name} should show message {message_id} once",
            ).to_have_count(1, timeout=int(DISRUPTION_WAIT_S * 1000))
        shown = rendered_ids(self.tab)
        assert len(shown) == len(set(shown)), f"page {self.tab.name} duplicates: {shown}"
        assert shown == sorted(shown, key=id_key), f"page {self.tab.name} order: {shown}"


def is_dropped_stream_noise(entry: dict[str, str]) -> bool:
    """A network-level error of the page's own live stream, which Chromium logs
    when a killed worker (or a reload) cuts the stream, e.g. "Failed to load
    resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING" for .../events. The page
    cannot prevent it and recovers by itself; any other console error or
    warning (a script error, a failed history fetch or POST) is a bug."""
    on_stream = EVENTS_PATH in entry["url"] or WS_PATH in entry["url"]
    return entry["type"] == "error" and on_stream and "net::ERR_" in entry["text"]


def healthz_pids(server: ServerProcess, workers: int = 2) -> dict[int, int]:
    """Worker index -> pid, asking on fresh connections until every index answered."""
    pids = run_in_thread(worker_pids(server.url, workers, timeout=5))
    assert len(pids) == workers, f"/healthz reached only workers {pids}"
    return pids


def wait_for_workers(
    server: ServerProcess, condition: Any, what: str, timeout_s: float
) -> dict[int, int]:
    """Poll /healthz until ``condition(index -> pid)`` holds; the pids."""
    deadline = time.monotonic() + timeout_s
    while not condition(pids := healthz_pids(server)):
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s: {pids}"
        time.sleep(0.05)
    return pids


class PostsInBackground:
    """Posts ``count`` messages over plain HTTP, paced, from a thread of its own,
    so that they land while the server reloads or replaces a worker."""

    def __init__(self, server: ServerProcess, label: str, count: int = 5) -> None:
        self.ids: list[str] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(
            target=self._run, args=(server, label, count), name=f"post-{label}", daemon=True
        )
        self._thread.start()

    def _run(self, server: ServerProcess, label: str, count: int) -> None:
        for i in range(count):
            try:
                self.ids.append(post_message(server, f"{label} {i}")["id"])
            except Exception as exc:  # noqa: BLE001  reported by join()
                self.errors.append(f"post {i}: {exc!r}")
            time.sleep(PACE_S)

    def join(self) -> list[str]:
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "posting hung"
        assert self.errors == [], self.errors
        return self.ids


def reload_under_posts(server: ServerProcess, watches: list[Watch]) -> dict[int, int]:
    """SIGHUP replaces every worker; the server tells each stream to reconnect,
    and each page comes back on a new worker by itself, resuming by id.
    Messages posted meanwhile all show, once, in order. The new workers' pids."""
    old_pids = set(healthz_pids(server).values())
    server.signal(signal.SIGHUP)
    reload_posts = PostsInBackground(server, "during the reload")
    for w in watches:
        w.wait_until(
            lambda w=w: any(pid not in old_pids for pid in w.stream_pids),
            "the stream never came back on a new worker",
        )
    reload_ids = reload_posts.join()
    for w in watches:
        w.tab.expect_live()
        states = w.conn_states()
        assert "reconnecting" in states and states[-1] == "live", (w.tab.name, states)
        w.expect_each_once_in_order(reload_ids)
    return wait_for_workers(
        server,
        lambda pids: old_pids.isdisjoint(pids.values()),
        "every worker replaced",
        RELOAD_DEADLINE_S,
    )


def kill_under_posts(
    server: ServerProcess, watches: list[Watch], a: Watch, pids: dict[int, int]
) -> None:
    """SIGKILL the worker that serves ``a``'s stream, so that at least one page
    is cut off without warning; the main process replaces it. Messages posted
    meanwhile all show, once, in order; a page on the other worker is undisturbed."""
    for w in watches:
        w.reset_conn_states()
    victim = a.stream_pids[-1]
    assert victim in pids.values(), (victim, pids)
    victim_index = next(index for index, pid in pids.items() if pid == victim)
    on_victim = [w for w in watches if w.stream_pids[-1] == victim]
    os.kill(victim, signal.SIGKILL)
    kill_posts = PostsInBackground(server, "after the kill")
    replaced = wait_for_workers(
        server,
        lambda now: now[victim_index] != victim,
        "the killed worker replaced",
        REPLACEMENT_DEADLINE_S,
    )
    assert replaced[1 - victim_index] == pids[1 - victim_index], "the other kept serving"
    kill_ids = kill_posts.join()
    for w in watches:
        if w in on_victim:
            w.wait_until(
                lambda w=w: w.stream_pids[-1] != victim,
                "the stream never reconnected after its worker was killed",
            )
        w.tab.expect_live()
        w.expect_each_once_in_order(kill_ids)
        states = w.conn_states()
        if w in on_victim:
            assert "reconnecting" in states and states[-1] == "live", (w.tab.name, states)
        else:  # on the surviving worker: undisturbed
            assert states == [], (w.tab.name, states)


def assert_no_page_problems(watches: list[Watch], problems: list[str]) -> None:
    """No uncaught exception, no console error or warning but a cut stream's."""
    for w in watches:
        assert w.page_errors == [], (w.tab.name, w.page_errors)
        unexpected = [e for e in w.console if not is_dropped_stream_noise(e)]
        assert unexpected == [], (w.tab.name, unexpected)
    # open_tab's own listeners saw nothing that the watches missed.
    logged = sum(len(w.console) + len(w.page_errors) for w in watches)
    assert len(problems) == logged, "\n".join(problems)


@pytest.mark.timeout(90)
def test_two_pages_chat_on_through_a_reload_and_a_killed_worker(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    # 1. Two pages in separate contexts (separate users), both live.
    for name in ("A", "B"):
        tabs.append(open_tab(name, browser, chat_server.url, problems))
    a, b = watches = [Watch(tab) for tab in tabs]
    for w in watches:
        w.tab.expect_live()
    assert problems == [], "\n".join(problems)  # the pages loaded cleanly

    # 2. A types, B sees it.
    send(a.tab, "before the reload")
    wait_for_message(b.tab, "before the reload")

    # 3. SIGHUP replaces every worker; see reload_under_posts.
    new_pids = reload_under_posts(chat_server, watches)

    # 4. SIGKILL the worker that serves A's stream; see kill_under_posts.
    kill_under_posts(chat_server, watches, a, new_pids)

    # 5. B types, A sees it.
    send(b.tab, "after the kill, from B")
    wait_for_message(a.tab, "after the kill, from B")
    wait_for_message(b.tab, "after the kill, from B")

    # Both pages show exactly what the server stored: nothing lost, nothing twice.
    stored = [m["id"] for m in stored_messages(chat_server)]
    assert len(stored) == 1 + 5 + 5 + 1, stored
    for w in watches:
        assert rendered_ids(w.tab) == stored, f"page {w.tab.name}"

    # 6. No uncaught exception at all; no console error or warning other
    # than the network error of a stream that a reload or the kill cut.
    assert_no_page_problems(watches, problems)


# ---------------------------------------------------------------- SSE and WebSocket pages together


def sent_message_frame(payload: str, text: str) -> bool:
    """Whether ``payload`` is the page's {"type":"message","text":...,"ref":...}
    frame carrying ``text``."""
    if '"type":"message"' not in payload:
        return False
    frame = parse_json_object(payload)
    return frame.get("type") == "message" and frame.get("text") == text and "ref" in frame


def parse_json_object(payload: str) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def say_over_websocket(sender: Tab, receiver: Tab, socket: Any, text: str) -> None:
    """The WebSocket page ``sender`` types ``text``: it goes as one frame on
    ``socket``, is acknowledged with its ref, and shows on both pages; no POST."""
    traffic = sender.traffic
    with socket.expect_event(
        "framesent", lambda payload: sent_message_frame(str(payload), text), timeout=WAIT_MS
    ):
        send(sender, text)
    wait_for_message(receiver, text)
    wait_for_message(sender, text)
    sent = [f for f in traffic.frames_sent if sent_message_frame(f, text)]
    assert len(sent) == 1, traffic.frames_sent
    ref = parse_json_object(sent[0])["ref"]
    acks = [
        frame
        for raw in traffic.frames_received
        if (frame := parse_json_object(raw)).get("type") == "ack"
    ]
    assert [ack["ref"] for ack in acks] == [ref], traffic.frames_received
    assert acks[0]["message"]["text"] == text
    assert traffic.posts_to_messages() == [], traffic.posts_to_messages()


@pytest.mark.timeout(90)
def test_sse_page_and_websocket_page_chat_together(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    # History that exists before either page opens.
    earlier = post_message(chat_server, "posted before the pages opened")

    # A: the page as it loads by default (SSE + POST); B: ?transport=ws.
    a = open_tab("A", browser, chat_server.url, problems, transport="sse")
    a_traffic = a.traffic
    tabs.append(a)
    b = open_tab("B", browser, chat_server.url, problems, transport="ws")
    b_traffic = b.traffic
    tabs.append(b)
    assert a.page.evaluate("window.chat.transport") == "sse"
    assert b.page.evaluate("window.chat.transport") == "ws"

    # 1. Both live. B's live stream is one WebSocket, opened after the
    # history and resuming from its last id; B never opened an events stream.
    for tab in (a, b):
        tab.expect_live()
    assert len(b_traffic.sockets) == 1, [ws.url for ws in b_traffic.sockets]
    socket = b_traffic.sockets[0]
    assert WS_PATH in socket.url, socket.url
    assert socket.url.startswith("ws://"), socket.url
    assert socket.url.endswith(f"?since={earlier['id']}"), socket.url
    assert b_traffic.events_requests() == [], b_traffic.events_requests()
    assert a_traffic.sockets == [], [ws.url for ws in a_traffic.sockets]
    assert len(a_traffic.events_requests()) == 1, a_traffic.events_requests()

    # 2. History on load, on both.
    for tab in (a, b):
        expect_history_loaded(tab, earlier)

    a_id, b_id = a.user_id(), b.user_id()
    assert a_id != b_id, "separate contexts must be separate users"

    # 3. A (SSE page, sends by POST) -> B (WebSocket page).
    say(a, b, "hello from the SSE page")
    assert len(a_traffic.posts_to_messages()) == 1, a_traffic.posts_to_messages()

    # B (sends over its WebSocket, waits for the ack) -> A.
    say_over_websocket(b, a, socket, "hi from the WebSocket page")

    # 4. Presence: each page lists both users, and only them (the HTTP
    # poster of the history holds no stream, so it is not online).
    for tab in (a, b):
        tab.expect_online([a_id, b_id], 2)

    # 5. Both pages show what the server stored: the same ids, in order, once.
    stored = [m["id"] for m in stored_messages(chat_server)]
    assert len(stored) == 3, stored
    ids_a, ids_b = rendered_ids(a), rendered_ids(b)
    assert ids_a == ids_b == stored, (ids_a, ids_b, stored)
    assert len(set(ids_a)) == len(ids_a)
    assert ids_a == sorted(ids_a, key=id_key)

    # Still live, on the same streams: nothing dropped and reopened meanwhile.
    for tab in (a, b):
        tab.expect_live()
    assert len(b_traffic.sockets) == 1 and not socket.is_closed()
    assert len(a_traffic.events_requests()) == 1, a_traffic.events_requests()
    assert b_traffic.events_requests() == []

    # No console error or warning, no page error, on either page.
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- presence as changes


def presence_kinds(tab: Tab) -> list[str]:
    return [kind for kind, _ in tab.stream_events() if kind in ("presence", "presence_diff")]


def user_ids(users: Any) -> set[str]:
    return {user["user_id"] for user in users}


def tag_of(user_id: str) -> str:
    """The tag the page shows after a user's name: the first six hex digits of its id."""
    assert re.fullmatch(r"u-[0-9a-f]{24}", user_id), user_id
    return user_id[2:8]


def rename(tab: Tab, name: str) -> None:
    """Save a new display name in the page's name form."""
    tab.page.locator("#name-input").fill(name)
    tab.page.locator("#name-save").click()
    expect(tab.page.locator("#me")).to_have_text(name)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_joins_renames_and_leaves_reach_another_page_as_presence_changes(
    start_server: Callable[..., ServerProcess], browser: Any, transport: str, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    # 1. A alone: it lists itself, once, marked as itself, with the count 1.
    a = open_tab("A", browser, chat_server.url, problems, transport=transport)
    tabs.append(a)
    a_id = a.user_id()
    a.expect_online([a_id], 1)
    expect(a.online_ids()).to_have_class("self")
    assert presence_kinds(a)[0] == "presence", a.stream_events()

    # 2. B opens: A sees B appear by a change on the stream it already has.
    b = open_tab("B", browser, chat_server.url, problems)
    tabs.append(b)
    b_id = b.user_id()
    for tab in (a, b):
        tab.expect_online([a_id, b_id], 2)
    kinds = presence_kinds(a)
    assert kinds[0] == "presence" and set(kinds[1:]) == {"presence_diff"}, kinds
    joins = [data for kind, data in a.stream_events() if kind == "presence_diff"]
    assert any(b_id in user_ids(d["joined"]) and d["count"] == 2 for d in joins), joins

    # 3. Renames are changes too (B is already listed: its name is replaced), and
    # the list is in name order ignoring case: "aaron" before "Zed".
    rename(a, "Zed")
    rename(b, "aaron")
    a_tag, b_tag = tag_of(a_id), tag_of(b_id)
    expect(a.online_ids()).to_have_text(
        [f"aaron {b_tag}", f"Zed {a_tag} (you)"], timeout=PRESENCE_WAIT_MS
    )
    expect(b.online_ids()).to_have_text(
        [f"aaron {b_tag} (you)", f"Zed {a_tag}"], timeout=PRESENCE_WAIT_MS
    )
    a.expect_online([a_id, b_id], 2)

    # 4. B's page closes: A sees B leave, by a change, and the count go back to 1.
    tabs.remove(b)
    b.context.close()
    a.expect_online([a_id], 1, timeout=PRESENCE_WAIT_MS)
    # One snapshot when the stream opened, and changes ever since.
    kinds = presence_kinds(a)
    assert kinds[0] == "presence" and set(kinds[1:]) == {"presence_diff"}, kinds
    leaves = [data for kind, data in a.stream_events() if kind == "presence_diff"]
    assert any(b_id in user_ids(d["left"]) and d["count"] == 1 for d in leaves), leaves

    # All of it on A's first stream: nothing was dropped and reopened.
    a.expect_live()
    if transport == "ws":
        assert len(a.traffic.sockets) == 1 and not a.traffic.sockets[0].is_closed()
    else:
        assert len(a.traffic.events_requests()) == 1, a.traffic.events_requests()
    assert problems == [], "\n".join(problems)


@pytest.fixture
def small_list_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """Rooms of more than one user carry presence counts only."""
    return start_server(workers=2, env={"CHAT_PRESENCE_LIST_MAX": "1"})


def expect_count_only(tab: Tab, count: int) -> None:
    """The page shows the count ``count`` and lists nobody."""
    expect(tab.page.locator("#people")).to_have_attribute("data-mode", "count")
    expect(tab.page.locator("#online-count")).to_have_text(str(count))
    expect(tab.page.locator("#online-note-text")).to_contain_text(f"{count} online")
    expect(tab.page.locator("#online")).to_be_hidden()
    expect(tab.page.locator("#online li")).to_have_count(0)


@pytest.mark.timeout(90)
def test_rooms_over_the_list_limit_show_the_count_and_no_list(
    small_list_server: ServerProcess, browser: Any, tabs: list[Tab]
) -> None:
    problems: list[str] = []
    # 1. One user is within presence_list_max = 1: listed.
    a = open_tab("A", browser, small_list_server.url, problems, transport="sse")
    tabs.append(a)
    a_id = a.user_id()
    a.expect_online([a_id], 1)

    # 2. A second user (on a WebSocket) takes the room over the limit: every
    # page gets a new snapshot with the count and no list, and shows just that.
    b = open_tab("B", browser, small_list_server.url, problems, transport="ws")
    tabs.append(b)
    b_id = b.user_id()
    for tab in (a, b):
        expect_count_only(tab, 2)
        snapshots = [data for kind, data in tab.stream_events() if kind == "presence"]
        assert "online" not in snapshots[-1] and snapshots[-1]["count"] == 2, snapshots

    # 3. On request, A looks at who is online (GET .../online): both, once each.
    a.page.locator("#online-more").click()
    expect(a.page.locator("#online")).to_be_visible()
    expect(a.online_ids()).to_have_count(2)
    for user_id in (a_id, b_id):
        expect(a.page.locator(f'#online li[data-user-id="{user_id}"]')).to_have_count(1)
    expect(a.page.locator(f'#online li[data-user-id="{a_id}"]')).to_have_class("self")
    expect(a.page.locator("#online-note-text")).to_contain_text("Showing 2 of 2 online")
    expect(a.page.locator("#online-more")).to_be_hidden()  # that was all of them
    expect(a.page.locator("#online-count")).to_have_text("2")

    # 4. B leaves: the room is within the limit again, and A's list is back.
    tabs.remove(b)
    b.context.close()
    a.expect_online([a_id], 1, timeout=PRESENCE_WAIT_MS)
    expect(a.page.locator("#online-note")).to_be_hidden()

    a.expect_live()
    assert len(a.traffic.events_requests()) == 1, a.traffic.events_requests()
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- names people can trust


@pytest.mark.timeout(90)
def test_namesakes_show_different_tags_in_messages_and_the_online_list(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    a = open_tab("A", browser, chat_server.url, problems)
    tabs.append(a)
    b = open_tab("B", browser, chat_server.url, problems, transport="ws")
    tabs.append(b)
    a_id, b_id = a.user_id(), b.user_id()
    tags = {a_id: tag_of(a_id), b_id: tag_of(b_id)}
    # 24 random bits each: equal by chance once in 16.7 million runs.
    assert tags[a_id] != tags[b_id], tags

    rename(a, "Sam")
    rename(b, "Sam")
    say(a, b, "from the first Sam")
    say(b, a, "from the second Sam")

    for tab, own_id in ((a, a_id), (b, b_id)):
        expect(tab.page.locator("#my-tag")).to_have_text(tags[own_id])
        tab.expect_online([a_id, b_id], 2)
        for user_id, tag in tags.items():
            line = tab.page.locator(f'#messages .message[data-user-id="{user_id}"]')
            expect(line, f"page {tab.name}: one message by {user_id}").to_have_count(1)
            expect(line.locator(".name")).to_have_text("Sam")
            expect(line.locator(".tag")).to_have_text(tag)
            person = tab.page.locator(f'#online li[data-user-id="{user_id}"]')
            expect(person.locator(".name")).to_have_text("Sam", timeout=PRESENCE_WAIT_MS)
            expect(person.locator(".tag")).to_have_text(tag)
        # What a reader sees of the two differs, in both places.
        authors = tab.page.locator("#messages .message .author").all_inner_texts()
        assert sorted(authors) == sorted(f"Sam {tag}" for tag in tags.values()), authors
        people = tab.page.locator("#online li").all_inner_texts()
        assert len(set(people)) == 2, people
        assert sorted(people) == sorted(
            f"Sam {tag}" + (" (you)" if user_id == own_id else "") for user_id, tag in tags.items()
        ), people
    assert problems == [], "\n".join(problems)


# Stored before names were checked: the server refuses it now, but sessions and
# history may still hold such names. Its U+202E (right-to-left override) would
# reverse everything after it on the line, were the name not isolated.
OLD_NAME = "Eve \u202ezyx"

# Where an element that holds a name (a message's author, a person online)
# draws its parts: the x of each character of the tag (and of our own "(you)").
NAME_LAYOUT = """(el) => {
  const lefts = (node) => [...node.firstChild.data].map((_, i) => {
    const range = document.createRange();
    range.setStart(node.firstChild, i);
    range.setEnd(node.firstChild, i + 1);
    return range.getBoundingClientRect().left;
  });
  const name = el.querySelector('.name');
  const tag = el.querySelector('.tag');
  const you = el.querySelector('.you');
  const author = el.querySelector('.author') ?? el;
  return {
    element: name.tagName,
    unicodeBidi: getComputedStyle(name).unicodeBidi,
    dir: name.dir,
    name: name.textContent,
    parts: [...author.childNodes].map((n) => (n.nodeType === 1 ? `.${n.className}` : n.data)),
    nameRight: name.getBoundingClientRect().right,
    tagLeft: tag.getBoundingClientRect().left,
    tagRight: tag.getBoundingClientRect().right,
    tagLefts: lefts(tag),
    youLefts: you ? lefts(you) : null,
  };
}"""


def store_old_name(redis_url: str, tab: Tab, name: str) -> None:
    """Make ``name`` the tab's user's name in Redis, past the server's checks."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.set(name_key(tab.user_id()), name, keepttl=True, xx=True)
    finally:
        client.close()


def expect_isolated(layout: dict[str, Any], tag: str) -> None:
    """The name is in a <bdi> that isolates it, and what follows it on the line
    reads left to right, after it: its tag, then our own marker if there is one."""
    assert layout["name"] == OLD_NAME, layout
    assert layout["parts"] == [".name", " ", ".tag"], layout
    lefts = layout["tagLefts"]
    assert len(lefts) == len(tag) and lefts == sorted(lefts), layout
    assert len(set(lefts)) == len(lefts), layout
    assert layout["tagLeft"] >= layout["nameRight"] - 0.5, layout
    if layout["youLefts"] is not None:
        you = layout["youLefts"]
        assert you == sorted(you) and you[0] >= layout["tagRight"] - 0.5, layout
    assert layout["element"] == "BDI", layout
    assert layout["unicodeBidi"] == "isolate", layout
    assert layout["dir"] == "auto", layout


@pytest.mark.timeout(90)
def test_an_old_name_with_a_bidi_override_cannot_reorder_what_follows_it(
    start_server: Callable[..., ServerProcess], browser: Any, redis_url: str, tabs: list[Tab]
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    a = open_tab("A", browser, chat_server.url, problems)
    tabs.append(a)
    a_id = a.user_id()
    a_tag = tag_of(a_id)
    store_old_name(redis_url, a, OLD_NAME)
    with a.page.expect_response(lambda r: EVENTS_PATH in r.url, timeout=PAGE_LOAD_MS):
        a.page.reload(timeout=PAGE_LOAD_MS)
    expect(a.page.locator("#me")).to_have_text(OLD_NAME)
    a.expect_live()

    b = open_tab("B", browser, chat_server.url, problems)
    tabs.append(b)
    say(a, b, "said under an old name")

    for tab in (a, b):
        line = tab.page.locator(f'#messages .message[data-user-id="{a_id}"]')
        expect(line).to_have_count(1)
        expect(line.locator(".tag")).to_have_text(a_tag)
        expect_isolated(line.locator(".author").evaluate(NAME_LAYOUT), a_tag)
        person = tab.page.locator(f'#online li[data-user-id="{a_id}"]')
        expect(person.locator(".name")).to_have_text(OLD_NAME, timeout=PRESENCE_WAIT_MS)
        layout = person.evaluate(NAME_LAYOUT)
        expect_isolated(layout, a_tag)
        assert (layout["youLefts"] is not None) == (tab is a), layout
    # The header's own name is isolated too.
    me = a.page.locator("#me")
    assert me.evaluate("(el) => [el.tagName, getComputedStyle(el).unicodeBidi]") == [
        "BDI",
        "isolate",
    ]
    assert problems == [], "\n".join(problems)


@pytest.fixture
def short_history_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """Rooms keep about ten messages: a page that is away for long misses some for good."""
    return start_server(workers=1, env={"CHAT_HISTORY_LEN": "10"})


def list_entries(tab: Tab) -> list[str]:
    """What #messages shows, in order: message ids, and "notice" for a gap notice."""
    entries: list[str] = tab.page.eval_on_selector_all(
        "#messages > li", "(els) => els.map((el) => el.dataset.id ?? el.className)"
    )
    return entries


@pytest.mark.timeout(90)
@pytest.mark.parametrize("saw", ["a message", "an empty room"])
def test_a_page_that_resumes_past_the_trimmed_history_says_what_is_missing(
    short_history_server: ServerProcess, browser: Any, tabs: list[Tab], saw: str
) -> None:
    problems: list[str] = []
    for transport in ("sse", "ws"):
        tabs.append(open_tab(transport, browser, short_history_server.url, problems, transport))
    seen_ids: list[str] = []
    if saw == "a message":
        seen = post_message(short_history_server, "seen by both pages")
        seen_ids.append(seen["id"])
        for tab in tabs:
            wait_for_message(tab, seen["text"])
    # (A page that found its room empty resumes from 0-0: it has seen nothing.)
    for tab in tabs:
        # Live first: a stream closed while it connects is a console warning.
        tab.expect_live()
        # Away, as in the back/forward cache: the page closes its stream.
        tab.page.evaluate("window.dispatchEvent(new PageTransitionEvent('pagehide'))")
    for i in range(150):
        post_message(short_history_server, f"posted while away {i}")
    retained = [m["id"] for m in stored_messages(short_history_server)]
    assert len(retained) < 150, "the history was never trimmed"
    for tab in tabs:
        tab.page.evaluate(
            "window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))"
        )
    for tab in tabs:
        expect(tab.page.locator(f'#messages [data-id="{retained[-1]}"]')).to_have_count(1)
        notice = tab.page.locator("#messages .notice")
        expect(notice).to_have_count(1)
        expect(notice).to_have_text("Some earlier messages are no longer available.")
        # Where the missing messages were: after what the page saw, before what came back.
        assert list_entries(tab) == [*seen_ids, "notice", *retained], tab.name
        gaps = [data["first_id"] for kind, data in tab.stream_events() if kind == "gap"]
        assert gaps == [retained[0]], tab.name
    assert problems == [], "\n".join(problems)
