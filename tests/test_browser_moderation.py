"""A real browser, a moderator and a member: the page offers the moderator
Delete on everyone's messages (Edit on its own only), from the keyboard too,
and a deletion shows live on the other page; the member gets no control on
others' messages. The role comes from a token's grant, or from a membership
the application's backend grants through the server API, which the page
follows from the next room it shows."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from .browser import (
    PAGE_LOAD_MS,
    WAIT_MS,
    WS_PATH,
    Tab,
    message_texts,
    open_tab,
    row,
    say,
    tab_to,
)
from .signing import SECRET, claims, sign
from .support import ServerProcess
from .test_browser_signin import sign_in_from_the_page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

MODERATE = "m" * 40  # a server API key's secret, of the moderate scope
PRIVATE = "team-ops"


def grant(server: ServerProcess, user_id: str, role: str) -> None:
    """The application's backend gives ``user_id`` ``role`` in the private room."""
    request = urllib.request.Request(
        f"{server.url}/server/v1/rooms/{PRIVATE}/members/{user_id}",
        data=json.dumps({"role": role}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {MODERATE}"},
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 204


def go_to(tab: Tab, room: str) -> None:
    """Show ``room`` with the page's "other room" field (no page load)."""
    tab.page.locator("#room-input").fill(room)
    tab.page.locator("#room-input").press("Enter")
    expect(tab.page.locator("#room")).to_have_text(room, timeout=WAIT_MS)
    tab.expect_live()


def test_a_moderator_deletes_anothers_message_from_the_page_and_a_member_may_not(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    server = start_server(
        workers=2,
        env={
            "CHAT_AUTH_JWT_SECRET": SECRET,
            "CHAT_PRIVATE_ROOM_PREFIXES": "team-",
            "CHAT_SERVER_API_KEYS": f"app:{MODERATE}:moderate",
        },
    )
    problems: list[str] = []
    a = open_tab("A", browser, server.url, problems)  # an anonymous member, over SSE
    m = open_tab("M", browser, server.url, problems, transport="ws")
    tabs.extend((a, m))
    # The application signs M in as a moderator of general; the page loaded next knows it.
    token = sign(claims(sub="mod", name="Mod", rooms={"general": "moderator"}))
    sign_in_from_the_page(m, token)
    with m.page.expect_websocket(lambda ws: WS_PATH in ws.url, timeout=PAGE_LOAD_MS):
        m.page.goto(f"{server.url}/?transport=ws", timeout=PAGE_LOAD_MS)
    for tab in tabs:
        tab.expect_live()
    say(a, m, "<i>A</i> says hi")
    say(m, a, "M says hi")

    # The moderator: Delete alone on A's message, Edit and Delete on its own.
    theirs = row(m, "<i>A</i> says hi")
    expect(theirs.locator("button.delete")).to_have_count(1)
    expect(theirs.locator("button.edit")).to_have_count(0)
    expect(row(m, "M says hi").locator("button")).to_have_count(2)
    # The member: nothing on the moderator's message; both on its own.
    expect(row(a, "M says hi").locator("button")).to_have_count(0)
    expect(row(a, "<i>A</i> says hi").locator("button")).to_have_count(2)

    # The moderator deletes A's message from the keyboard: it goes from both pages.
    m.page.locator("#input").focus()
    tab_to(m, f'.message[data-id="{theirs.get_attribute("data-id")}"] button.delete')
    m.page.keyboard.press("Enter")
    for tab in tabs:
        expect(message_texts(tab, "<i>A</i> says hi")).to_have_count(0, timeout=WAIT_MS)
    expect(message_texts(a, "M says hi")).to_have_count(1)

    # A private room where the backend makes both members: no Delete on others' there.
    grant(server, a.user_id(), "member")
    grant(server, "mod", "member")
    for tab in tabs:
        go_to(tab, PRIVATE)
    say(a, m, "A in ops")
    expect(row(m, "A in ops").locator("button")).to_have_count(0)
    # The backend makes M a moderator there: the page knows from the next room it shows.
    grant(server, "mod", "moderator")
    # Away and straight back, the way out still loading: the role shown is asked anew.
    m.page.go_back()
    expect(m.page.locator("#room")).to_have_text("general", timeout=WAIT_MS)
    m.page.go_forward()
    expect(m.page.locator("#room")).to_have_text(PRIVATE, timeout=WAIT_MS)
    m.expect_live()
    expect(row(m, "A in ops").locator("button.delete")).to_have_count(1, timeout=WAIT_MS)
    row(m, "A in ops").locator("button.delete").click()
    for tab in tabs:
        expect(message_texts(tab, "A in ops")).to_have_count(0, timeout=WAIT_MS)
    assert problems == [], "\n".join(problems)
