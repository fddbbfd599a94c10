"""Chat pages in headless Chromium, driven by Playwright: open one, type, read what it shows."""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import expect

from .support import ServerProcess

WAIT_MS = 5_000  # any single wait in the page
PAGE_LOAD_MS = 10_000
EVENTS_PATH = "/api/rooms/general/events"
WS_PATH = "/api/rooms/general/ws"


# Runs before the page's own script: records every presence snapshot, presence
# change and gap notice that the page's SSE stream or WebSocket receives, in
# order, as [type, data]. Its listeners are added first, so by the time the page
# shows a change, the event that caused it is recorded.
RECORD_STREAM_EVENTS = """(() => {
  const TYPES = ['presence', 'presence_diff', 'gap'];
  const events = (window.__streamEvents = []);
  const parse = (text) => { try { return JSON.parse(text); } catch { return null; } };
  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(...args) {
      super(...args);
      for (const type of TYPES) {
        this.addEventListener(type, (e) => events.push([type, parse(e.data)]));
      }
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        const frame = typeof e.data === 'string' ? parse(e.data) : null;
        if (TYPES.includes(frame?.type)) events.push([frame.type, frame]);
      });
    }
  };
})();"""


@dataclass
class Traffic:
    """What one page sent over the network: every HTTP request, every WebSocket
    it opened and the text frames it sent and received on them."""

    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, url)
    sockets: list[Any] = field(default_factory=list)
    frames_sent: list[str] = field(default_factory=list)
    frames_received: list[str] = field(default_factory=list)

    def posts_to_messages(self) -> list[str]:
        return [url for method, url in self.requests if method == "POST" and "/messages" in url]

    def events_requests(self) -> list[str]:
        return [url for _, url in self.requests if "/events" in url]


@dataclass
class Tab:
    """One page in its own browser context, with everything it logged."""

    name: str
    context: Any
    page: Any
    events_worker: str
    problems: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # worker of every events stream opened
    traffic: Traffic = field(default_factory=Traffic)

    def user_id(self) -> str:
        session = self.page.evaluate(
            "fetch('/api/session', {credentials: 'same-origin'}).then((r) => r.json())"
        )
        assert isinstance(session.get("user_id"), str), session
        return str(session["user_id"])

    def expect_live(self) -> None:
        """The page says its live stream is open."""
        expect(self.page.locator("#conn-state")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )

    def stream_events(self) -> list[tuple[str, Any]]:
        """Every presence snapshot, presence change and gap notice received, in order."""
        events: list[list[Any]] = self.page.evaluate("window.__streamEvents")
        return [(kind, data) for kind, data in events]

    def online_ids(self) -> Any:
        """The users listed online, as a locator."""
        return self.page.locator("#online li[data-user-id]")

    def expect_online(self, user_ids: list[str], count: int, timeout: int = WAIT_MS) -> None:
        """The page lists exactly ``user_ids`` online and shows the count ``count``."""
        for user_id in user_ids:
            expect(
                self.page.locator(f'#online li[data-user-id="{user_id}"]'),
                f"page {self.name} should list {user_id} online, once",
            ).to_have_count(1, timeout=timeout)
        expect(self.online_ids(), f"page {self.name}: who is listed").to_have_count(
            len(user_ids), timeout=timeout
        )
        expect(self.page.locator("#online-count"), f"page {self.name}: count").to_have_text(
            str(count), timeout=timeout
        )
        expect(self.page.locator("#people")).to_have_attribute("data-mode", "list")
        expect(self.page.locator("#online")).to_be_visible()


def post_message(server: ServerProcess, text: str) -> dict[str, Any]:
    """Post over plain HTTP, outside the browser (a separate, cookieless user)."""
    request = urllib.request.Request(
        f"{server.url}/api/rooms/general/messages",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 201
        message: dict[str, Any] = json.loads(resp.read())["message"]
    return message


def stored_messages(server: ServerProcess) -> list[dict[str, Any]]:
    """The room's history as the server has it (its last 200 messages)."""
    with urllib.request.urlopen(
        f"{server.url}/api/rooms/general/messages?limit=200", timeout=5
    ) as resp:
        messages: list[dict[str, Any]] = json.loads(resp.read())["messages"]
    return messages


def open_tab(
    name: str, browser: Any, url: str, all_problems: list[str], transport: str = "sse"
) -> Tab:
    """A new context and page on the chat page (``transport="ws"``: ``?transport=ws``),
    recording its problems and traffic from before it loads; returns once its event
    stream (SSE) or WebSocket answered."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(RECORD_STREAM_EVENTS)
    page = context.new_page()
    problems: list[str] = []
    streams: list[str] = []
    traffic = Traffic()

    def on_console(msg: Any) -> None:
        if msg.type in ("error", "warning"):
            line = f"page {name}: console {msg.type}: {msg.text} at {msg.location}"
            problems.append(line)
            all_problems.append(line)

    def on_page_error(error: Any) -> None:
        line = f"page {name}: page error: {error}"
        problems.append(line)
        all_problems.append(line)

    def on_response(response: Any) -> None:
        if EVENTS_PATH in response.url:
            streams.append(response.header_value("x-chat-worker") or "?")

    def on_websocket(ws: Any) -> None:
        traffic.sockets.append(ws)
        ws.on("framesent", lambda payload: traffic.frames_sent.append(str(payload)))
        ws.on("framereceived", lambda payload: traffic.frames_received.append(str(payload)))

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    page.on("request", lambda request: traffic.requests.append((request.method, request.url)))
    page.on("websocket", on_websocket)
    try:
        if transport == "ws":
            with page.expect_websocket(lambda ws: WS_PATH in ws.url, timeout=PAGE_LOAD_MS):
                page.goto(f"{url}/?transport=ws", timeout=PAGE_LOAD_MS)
            worker = "?"  # Playwright does not expose a WebSocket's handshake headers
        else:
            with page.expect_response(
                lambda r: EVENTS_PATH in r.url, timeout=PAGE_LOAD_MS
            ) as events:
                page.goto(url, timeout=PAGE_LOAD_MS)
            response = events.value
            assert response.status == 200, f"events stream answered {response.status}"
            worker = response.header_value("x-chat-worker")
            assert worker is not None, "the events stream carries no X-Chat-Worker header"
    except BaseException:
        context.close()
        raise
    return Tab(name, context, page, worker, problems, streams, traffic)


def message_texts(tab: Tab, text: str) -> Any:
    """The rendered message texts equal to ``text``, as a locator."""
    exact = re.compile(f"^{re.escape(text)}$")
    return tab.page.locator("#messages .message .text").filter(has_text=exact)


def wait_for_message(tab: Tab, text: str) -> None:
    expect(
        message_texts(tab, text), f"page {tab.name} should show {text!r} once, as text"
    ).to_have_count(1, timeout=WAIT_MS)
    # The text shows exactly as typed (textContent, not markup).
    assert message_texts(tab, text).first.text_content() == text


def send(tab: Tab, text: str) -> None:
    """Type into the input and press Enter, as a user does; wait until it is sent."""
    box = tab.page.locator("#input")
    box.fill(text)
    box.press("Enter")
    # The input is cleared only once the server stored the message.
    expect(box).to_have_value("", timeout=WAIT_MS)
    expect(tab.page.locator("#status")).to_have_text("", timeout=WAIT_MS)


def say(sender: Tab, receiver: Tab, text: str) -> None:
    """``sender`` types ``text``; it shows, once, on both pages."""
    send(sender, text)
    wait_for_message(receiver, text)
    wait_for_message(sender, text)


def expect_history_loaded(tab: Tab, message: dict[str, Any]) -> None:
    """The page shows ``message`` from the history once, and its user's name."""
    expect(tab.page.locator(f'#messages .message[data-id="{message["id"]}"]')).to_have_count(1)
    wait_for_message(tab, message["text"])
    expect(tab.page.locator("#me")).not_to_have_text(re.compile(r"^(…)?$"))


def row(tab: Tab, text: str) -> Any:
    """The list entry of the message whose text is ``text``."""
    exact = re.compile(f"^{re.escape(text)}$")
    return tab.page.locator("#messages .message").filter(
        has=tab.page.locator(".text", has_text=exact)
    )


def tab_to(tab: Tab, selector: str, key: str = "Shift+Tab", most: int = 40) -> None:
    """Press ``key`` until the focus is on ``selector``; it must show where it is."""
    for _ in range(most):
        tab.page.keyboard.press(key)
        if tab.page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            assert tab.page.evaluate("document.activeElement.matches(':focus-visible')")
            return
    raise AssertionError(f"{selector} not reached with {key}")


def rendered_ids(tab: Tab) -> list[str]:
    ids: list[str] = tab.page.eval_on_selector_all(
        "#messages .message[data-id]", "(els) => els.map((el) => el.dataset.id)"
    )
    return ids
