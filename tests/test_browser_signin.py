"""The page and the application's sign-in, in headless Chromium against a real server.

The page says who you are: anonymous, or signed in by the application (whose
own page posted a token to ``POST /api/auth``), with no rename control when
the name is the token's. A private room the token grants is usable. When the
server ends the stream for good (signed out: SSE ``signed_out``, WebSocket
close 4001; sign-in expired: ``auth_expired``, close 4401), the page says so
and opens no new stream.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from .browser import PAGE_LOAD_MS, WAIT_MS, Tab, open_tab, send, wait_for_message
from .signing import SECRET, claims, sign
from .support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

ROOM = "team-red"
STREAM_PATHS = {"sse": f"/api/rooms/{ROOM}/events", "ws": f"/api/rooms/{ROOM}/ws"}
NO_RECONNECT_MS = 4_000  # the page's first retry comes within 1 s, later ones within 2, 4 s


def signed_in_server(start_server: Callable[..., ServerProcess], **env: str) -> ServerProcess:
    return start_server(
        workers=2,
        env={"CHAT_AUTH_JWT_SECRET": SECRET, "CHAT_PRIVATE_ROOM_PREFIXES": "team-", **env},
    )


def sign_in_from_the_page(tab: Tab, token: str) -> dict[str, Any]:
    """``POST /api/auth`` from the page, as the application's own page would."""
    status, body = tab.page.evaluate(
        """async (token) => {
          const res = await fetch('/api/auth', {
            method: 'POST',
            credentials: 'same-origin',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({token}),
          });
          return [res.status, await res.json()];
        }""",
        token,
    )
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def open_private_room(tab: Tab, url: str, transport: str) -> None:
    """Load the private room's page; returns once its stream answered."""
    page = tab.page
    path = STREAM_PATHS[transport]
    if transport == "ws":
        with page.expect_websocket(lambda ws: path in ws.url, timeout=PAGE_LOAD_MS):
            page.goto(f"{url}/rooms/{ROOM}?transport=ws", timeout=PAGE_LOAD_MS)
    else:
        with page.expect_response(lambda r: path in r.url, timeout=PAGE_LOAD_MS) as events:
            page.goto(f"{url}/rooms/{ROOM}", timeout=PAGE_LOAD_MS)
        assert events.value.status == 200
    tab.expect_live()


def stream_opens(tab: Tab, transport: str) -> int:
    """How many times the page asked for the private room's stream."""
    path = STREAM_PATHS[transport]
    if transport == "ws":
        return sum(path in ws.url for ws in tab.traffic.sockets)
    return sum(path in url for _, url in tab.traffic.requests)


def expect_no_new_stream(tab: Tab, transport: str) -> None:
    """The page opens no new stream within NO_RECONNECT_MS (it would have, by then)."""
    path = STREAM_PATHS[transport]
    before = stream_opens(tab, transport)
    event = "websocket" if transport == "ws" else "request"
    with pytest.raises(PlaywrightTimeoutError):
        tab.page.wait_for_event(event, lambda item: path in item.url, timeout=NO_RECONNECT_MS)
    assert stream_opens(tab, transport) == before


def anonymous_status(server: ServerProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_signed_in_page_shows_who_it_is_and_stops_when_signed_out(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab], transport: str
) -> None:
    server = signed_in_server(start_server)
    problems: list[str] = []
    tab = open_tab("A", browser, server.url, problems, transport=transport)
    tabs.append(tab)
    page = tab.page
    tab.expect_live()
    expect(page.locator("#auth-state")).to_have_text("anonymous")
    expect(page.locator("#name-input")).to_be_visible()

    token = sign(claims(sub="alice", name="Alice Smith", rooms={"team-*": "member"}))
    assert sign_in_from_the_page(tab, token)["user_id"] == "alice"
    open_private_room(tab, server.url, transport)
    expect(page.locator("#online li[data-user-id='alice']")).to_have_count(1)
    expect(page.locator("#me")).to_have_text("Alice Smith")
    expect(page.locator("#auth-state")).to_have_text("signed in")
    # The name is the token's: the server would refuse a rename.
    expect(page.locator("#name-input")).to_be_hidden()
    expect(page.locator("#name-save")).to_be_hidden()
    # The private room is there for alice, and for nobody else.
    send(tab, "for the team")
    wait_for_message(tab, "for the team")
    assert anonymous_status(server, f"/api/rooms/{ROOM}/messages") == 404

    opened = stream_opens(tab, transport)
    assert opened >= 1
    status = page.evaluate(
        "fetch('/api/auth', {method: 'DELETE', credentials: 'same-origin'}).then((r) => r.status)"
    )
    assert status == 204
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "signed-out")
    expect(page.locator("#status")).to_contain_text("Signed out")
    expect(page.locator("#auth-state")).to_have_text("signed out")
    expect(page.locator("#input")).to_be_disabled()
    # Who is online is not known any more: no stale list.
    expect(page.locator("#online li")).to_have_count(0)
    expect_no_new_stream(tab, transport)
    assert stream_opens(tab, transport) == opened
    assert problems == [], "\n".join(problems)


def test_a_page_whose_sign_in_expired_says_so_and_does_not_reconnect(
    start_server: Callable[..., ServerProcess], browser: Any, tabs: list[Tab]
) -> None:
    server = signed_in_server(start_server, CHAT_AUTH_LEEWAY_S="0")
    problems: list[str] = []
    tab = open_tab("A", browser, server.url, problems)
    tabs.append(tab)
    exp = int(time.time()) + 4
    token = sign(claims(sub="bob", exp=exp, rooms={ROOM: "reader"}))
    assert sign_in_from_the_page(tab, token)["expires_at"] == exp
    open_private_room(tab, server.url, "sse")
    page = tab.page
    expect(page.locator("#auth-state")).to_have_text("signed in")
    # Without a name in the token, the user may choose one.
    expect(page.locator("#name-input")).to_be_visible()
    # The warning comes first (within a minute of exp), then the end.
    expect(page.locator("#status")).to_contain_text("sign-in expires", timeout=WAIT_MS)
    expect(page.locator("#conn-state")).to_have_attribute(
        "data-state", "expired", timeout=WAIT_MS + 4_000
    )
    expect(page.locator("#status")).to_contain_text("Your sign-in expired")
    expect_no_new_stream(tab, "sse")
    assert problems == [], "\n".join(problems)
