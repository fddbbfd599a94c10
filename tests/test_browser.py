"""A real browser: headless Chromium (Debian's, driven by Playwright) chatting with itself.

Two pages in separate browser contexts (separate cookies, so separate sessions and
users), whose event streams are served by different workers, each see the other's
messages appear live, see the history on load, see each other online, render markup
as text, and log no console errors or warnings.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from .support import ServerProcess, running_server

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 5_000  # any single wait in the page
PAGE_LOAD_MS = 10_000
DIFFERENT_WORKER_TRIES = 30
DIFFERENT_WORKER_DEADLINE_S = 25.0
HEARTBEAT_S = 0.5  # what tests.support gives the server
EVENTS_PATH = "/api/rooms/general/events"
XSS = '<img src=x onerror="window.__xss=1">'


def chromium_path() -> str:
    """Debian's Chromium; skip without it, except in CI, which must install it."""
    path = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    if path is None:
        reason = "no Chromium (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it")
        pytest.skip(reason)
    return path


@dataclass
class Tab:
    """One page in its own browser context, with everything it logged."""

    name: str
    context: Any
    page: Any
    events_worker: str
    problems: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # worker of every events stream opened

    def user_id(self) -> str:
        session = self.page.evaluate(
            "fetch('/api/session', {credentials: 'same-origin'}).then((r) => r.json())"
        )
        assert isinstance(session.get("user_id"), str), session
        return str(session["user_id"])


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


def open_tab(name: str, browser: Any, url: str, all_problems: list[str]) -> Tab:
    """A new context and page on the chat page; returns once its event stream answered."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    problems: list[str] = []

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

    streams: list[str] = []
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    try:
        with page.expect_response(lambda r: EVENTS_PATH in r.url, timeout=PAGE_LOAD_MS) as events:
            page.goto(url, timeout=PAGE_LOAD_MS)
        response = events.value
        assert response.status == 200, f"events stream answered {response.status}"
        worker = response.header_value("x-chat-worker")
        assert worker is not None, "the events stream carries no X-Chat-Worker header"
    except BaseException:
        context.close()
        raise
    return Tab(name, context, page, worker, problems, streams)


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


def rendered_ids(tab: Tab) -> list[str]:
    ids: list[str] = tab.page.eval_on_selector_all(
        "#messages .message[data-id]", "(els) => els.map((el) => el.dataset.id)"
    )
    return ids


@pytest.fixture
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def chat_server(redis_url: str) -> Iterator[ServerProcess]:
    with running_server(redis_url=redis_url, workers=2) as server:
        yield server


@pytest.mark.timeout(90)
def test_two_browser_pages_on_different_workers_chat(
    chat_server: ServerProcess, browser: Any
) -> None:
    problems: list[str] = []
    tabs: list[Tab] = []
    try:
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
            expect(tab.page.locator("#conn-state")).to_have_attribute(
                "data-state", "live", timeout=WAIT_MS
            )
            # History on load.
            expect(
                tab.page.locator(f'#messages .message[data-id="{earlier["id"]}"]')
            ).to_have_count(1)
            wait_for_message(tab, earlier["text"])
            expect(tab.page.locator("#me")).not_to_have_text(re.compile(r"^(…)?$"))

        a_id, b_id = a.user_id(), b.user_id()
        assert a_id != b_id, "separate contexts must be separate users"

        # Live messages both ways, across workers.
        send(a, "hello from A")
        wait_for_message(b, "hello from A")
        wait_for_message(a, "hello from A")
        send(b, "hi A, B here")
        wait_for_message(a, "hi A, B here")
        wait_for_message(b, "hi A, B here")

        # Each sees the other online (presence is refreshed every heartbeat).
        expect(a.page.locator(f'#online li[data-user-id="{b_id}"]')).to_have_count(1)
        expect(b.page.locator(f'#online li[data-user-id="{a_id}"]')).to_have_count(1)
        expect(a.page.locator(f'#online li[data-user-id="{a_id}"]')).to_have_count(1)
        expect(b.page.locator(f'#online li[data-user-id="{b_id}"]')).to_have_count(1)

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
            expect(tab.page.locator("#conn-state")).to_have_attribute("data-state", "live")
        # Neither stream was dropped and reopened (perhaps on another worker) meanwhile.
        assert a.streams == [a.events_worker]
        assert b.streams == [b.events_worker]

        assert problems == [], "\n".join(problems)
    finally:
        for tab in tabs:
            tab.context.close()
