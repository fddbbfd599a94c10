"""A real browser: a message edited or deleted elsewhere changes in place on an
SSE page and a WebSocket page (its new text shown as text, with an "edited"
mark; a deleted one gone), and a page loaded afterwards shows the same."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from .browser import WAIT_MS, Tab, open_tab, rendered_ids, wait_for_message
from .signing import SECRET, claims, sign
from .support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

XSS = '<img src=x onerror="window.__xss=1">'
ALICE = {"Authorization": f"Bearer {sign(claims(sub='alice'))}"}


def request(server: ServerProcess, method: str, path: str, body: Any = None) -> Any:
    """A request of the signed-in user alice, outside the browser; its JSON, if any."""
    sent = urllib.request.Request(
        f"{server.url}/api/rooms/general/messages{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **ALICE},
        method=method,
    )
    with urllib.request.urlopen(sent, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def shown(tab: Tab, message_id: str) -> Any:
    return tab.page.locator(f'#messages .message[data-id="{message_id}"]')


def test_edits_and_deletions_change_messages_in_place_on_sse_and_websocket_pages(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    server = start_server(workers=2, env={"CHAT_AUTH_JWT_SECRET": SECRET})
    problems: list[str] = []
    kept = request(server, "POST", "", {"text": "to be edited"})["message"]
    gone = request(server, "POST", "", {"text": "to be deleted"})["message"]
    for name, transport in (("A", "sse"), ("B", "ws")):
        tabs.append(open_tab(name, browser, server.url, problems, transport=transport))
    for tab in tabs:
        tab.expect_live()
        wait_for_message(tab, "to be deleted")

    edited = request(server, "PATCH", f"/{kept['id']}", {"text": XSS})["message"]
    assert edited["text"] == XSS
    request(server, "DELETE", f"/{gone['id']}")
    for tab in tabs:
        wait_for_message(tab, XSS)  # as text, never as markup
        expect(shown(tab, kept["id"]).locator(".edited")).to_have_text("edited", timeout=WAIT_MS)
        expect(shown(tab, gone["id"])).to_have_count(0, timeout=WAIT_MS)
        assert rendered_ids(tab) == [kept["id"]]
        assert tab.page.evaluate("window.__xss") is None
        # A reconnect resumes after the last change it got, not before it.
        last_id = tab.page.evaluate("window.chat.lastId")
        assert tuple(map(int, last_id.split("-"))) > tuple(map(int, gone["id"].split("-")))
    # A page loaded now shows the same, from history.
    tabs[0].page.reload()
    tabs[0].expect_live()
    wait_for_message(tabs[0], XSS)
    expect(shown(tabs[0], kept["id"]).locator(".edited")).to_have_count(1)
    title = shown(tabs[0], kept["id"]).locator(".edited").get_attribute("title")
    assert title is not None and re.match(r"edited \S", title), title
    assert rendered_ids(tabs[0]) == [kept["id"]]
    assert problems == [], "\n".join(problems)
