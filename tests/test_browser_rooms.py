"""A real browser, two users: edits, deletions and typing made with the page's
own controls show live on the other's page; the room list counts what the
other posted in a room not shown and clears when it is opened; rooms switch
without a page load, back and forward included. And the room list and the
edit and delete controls work from the keyboard alone."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from .browser import (
    WAIT_MS,
    Tab,
    message_texts,
    open_tab,
    row,
    say,
    send,
    tab_to,
    wait_for_message,
)
from .support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

MARKER = "window.__notReloaded"


def room_link(tab: Tab, room: str) -> Any:
    return tab.page.locator(f'#rooms a[data-room="{room}"]')


def refresh_rooms(tab: Tab) -> None:
    """What the page does when its window gets the focus: ask for its rooms again."""
    tab.page.evaluate("window.dispatchEvent(new Event('focus'))")


def post_in(tab: Tab, room: str, text: str) -> None:
    """``tab``'s user posts in ``room`` from the page's origin, outside what it shows."""
    status = tab.page.evaluate(
        """([room, body]) => fetch(`/api/rooms/${room}/messages`, {
             method: 'POST', headers: {'Content-Type': 'application/json'}, body,
           }).then((r) => r.status)""",
        [room, json.dumps({"text": text})],
    )
    assert status == 201


def expect_room(tab: Tab, server: ServerProcess, room: str) -> None:
    """``tab`` shows ``room``, at its address, live, without having loaded again."""
    path = "/" if room == "general" else f"/rooms/{room}"
    expect(tab.page).to_have_url(f"{server.url}{path}", timeout=WAIT_MS)
    expect(tab.page.locator("#room")).to_have_text(room)
    expect(room_link(tab, room)).to_have_attribute("aria-current", "page")
    tab.expect_live()
    assert tab.page.evaluate(MARKER) is True, "the page was loaded again"


def test_two_users_see_edits_deletions_typing_and_unread_rooms_live(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    server = start_server(workers=2)
    problems: list[str] = []
    a = open_tab("A", browser, server.url, problems)
    b = open_tab("B", browser, server.url, problems, transport="ws")
    tabs.extend((a, b))
    for tab in tabs:
        tab.expect_live()
    # (Typing first: a notice within 2 s of the user's last one is not passed on.)
    typing_shows_live(server, a, b)
    edits_and_deletions_show_live(a, b)
    rooms_switch_and_count_unread(server, a, b)
    assert problems == [], "\n".join(problems)


def edits_and_deletions_show_live(a: Tab, b: Tab) -> None:
    """A edits and deletes with its page's controls: both pages change in place."""
    tabs = (a, b)
    say(a, b, "first draft")
    say(a, b, "to be deleted")

    # A edits with the page's controls; both pages show the new text, marked.
    row(a, "first draft").locator("button.edit").click()
    editor = row(a, "first draft").locator("input.editor")
    expect(editor).to_be_focused()
    editor.fill("<b>second</b> draft")
    editor.press("Enter")
    for tab in tabs:
        wait_for_message(tab, "<b>second</b> draft")
        expect(row(tab, "<b>second</b> draft").locator(".edited")).to_have_text("edited")
    # A deletes; it goes from both pages.
    row(a, "to be deleted").locator("button.delete").click()
    for tab in tabs:
        expect(message_texts(tab, "to be deleted")).to_have_count(0, timeout=WAIT_MS)
    # Only one's own messages have the controls.
    expect(row(a, "<b>second</b> draft").locator("button")).to_have_count(2)
    expect(b.page.locator("#messages .message button")).to_have_count(0)


def typing_shows_live(server: ServerProcess, a: Tab, b: Tab) -> None:
    """B types over its WebSocket, A with a POST; each sees the other typing."""
    tabs = (a, b)
    names = {tab.name: tab.page.locator("#me").text_content() for tab in tabs}
    b.page.locator("#input").fill("hmm")
    expect(a.page.locator("#typing")).to_have_text(f"{names['B']} is typing…", timeout=WAIT_MS)
    assert any('"typing"' in frame for frame in b.traffic.frames_sent)
    a.page.locator("#input").fill("so")
    expect(b.page.locator("#typing")).to_have_text(f"{names['A']} is typing…", timeout=WAIT_MS)
    assert ("POST", f"{server.url}/api/rooms/general/typing") in a.traffic.requests
    # A notice shows for a few seconds, then goes by itself; a message ends it at once.
    expect(a.page.locator("#typing")).to_have_text("", timeout=WAIT_MS)
    send(a, "so")
    expect(b.page.locator("#typing")).to_have_text("")
    b.page.locator("#input").fill("")


def rooms_switch_and_count_unread(server: ServerProcess, a: Tab, b: Tab) -> None:
    """A goes to another room and back; B posts there; A's list counts it until read."""
    # A goes to another room and back: the address changes, the page stays.
    a.page.evaluate(f"{MARKER} = true")
    a.page.locator("#room-input").fill("side")
    a.page.locator("#room-input").press("Enter")
    expect_room(a, server, "side")
    expect(a.page.locator("#messages .message")).to_have_count(0)
    send(a, "A in side")
    wait_for_message(a, "A in side")
    a.page.go_back()
    expect_room(a, server, "general")
    wait_for_message(a, "so")
    # B posts in the room A does not show: A's list counts it.
    post_in(b, "side", "B in side")
    refresh_rooms(a)
    expect(room_link(a, "side").locator(".badge")).to_have_text("1", timeout=WAIT_MS)
    # Opening the room shows it and marks it read.
    with a.page.expect_request(
        lambda r: r.method == "PUT" and r.url.endswith("/api/rooms/side/read")
    ) as read:
        room_link(a, "side").click()
    expect_room(a, server, "side")
    wait_for_message(a, "B in side")
    assert json.loads(read.value.post_data or "{}")["id"] == row(a, "B in side").get_attribute(
        "data-id"
    )
    a.page.go_back()
    expect_room(a, server, "general")
    refresh_rooms(a)
    expect(room_link(a, "side")).to_have_count(1)
    expect(room_link(a, "side").locator(".badge")).to_have_count(0, timeout=WAIT_MS)
    a.page.go_forward()
    expect_room(a, server, "side")
    wait_for_message(a, "B in side")
    # B, on general all along, saw none of it.
    expect(message_texts(b, "A in side")).to_have_count(0)


def test_the_room_list_and_the_edit_and_delete_controls_work_from_the_keyboard(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    server = start_server(workers=2)
    problems: list[str] = []
    a = open_tab("A", browser, server.url, problems)
    tabs.append(a)
    a.expect_live()
    keyboard = a.page.keyboard
    post_in(a, "lobby", "hello lobby")
    refresh_rooms(a)
    expect(room_link(a, "lobby")).to_have_count(1, timeout=WAIT_MS)
    send(a, "typo mesage")
    a.page.locator("#input").focus()

    # Edit: Enter opens the editor, Enter saves, the focus comes back.
    tab_to(a, ".message.mine button.edit")
    keyboard.press("Enter")
    editor = row(a, "typo mesage").locator("input.editor")
    expect(editor).to_be_focused()
    keyboard.press("ControlOrMeta+a")
    keyboard.type("typo message")
    keyboard.press("Enter")
    wait_for_message(a, "typo message")
    expect(row(a, "typo message").locator(".edited")).to_have_count(1)
    expect(row(a, "typo message").locator("button.edit")).to_be_focused()
    # Escape cancels.
    keyboard.press("Enter")
    keyboard.type(" and more")
    keyboard.press("Escape")
    expect(a.page.locator("input.editor")).to_have_count(0)
    wait_for_message(a, "typo message")
    expect(row(a, "typo message").locator("button.edit")).to_be_focused()
    # An edit the server refuses (an empty text) says why and stays open.
    keyboard.press("Enter")
    keyboard.press("ControlOrMeta+a")
    keyboard.press("Backspace")
    keyboard.press("Enter")
    expect(a.page.locator("#status")).to_contain_text("Not edited", timeout=WAIT_MS)
    expect(a.page.locator("input.editor")).to_be_focused()
    keyboard.press("Escape")
    # Delete is the next control.
    keyboard.press("Tab")
    expect(row(a, "typo message").locator("button.delete")).to_be_focused()
    keyboard.press("Enter")
    expect(message_texts(a, "typo message")).to_have_count(0, timeout=WAIT_MS)

    # The room list: a link to each room, Enter opens it.
    a.page.evaluate(f"{MARKER} = true")
    tab_to(a, '#rooms a[data-room="lobby"]')
    keyboard.press("Enter")
    expect_room(a, server, "lobby")
    wait_for_message(a, "hello lobby")
    expect(room_link(a, "lobby")).to_be_focused()
    # The refused edit logged its 400; nothing else was logged.
    refused = re.compile(r"status of 400 .*/api/rooms/general/messages/")
    assert [line for line in problems if not refused.search(line)] == [], "\n".join(problems)
