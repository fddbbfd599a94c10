"""The page sends each typed message with an idempotency key, the same on every try.

A message that reached the server but whose answer the page never got (the
POST's connection reset, the WebSocket dropped before the ack) stays in the
input with an error; sending it again shows it, and stores it, once.
"""

from __future__ import annotations

import json
import re
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
    send,
    stored_messages,
    wait_for_message,
)
from .support import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

MESSAGES_URL = re.compile(r"/api/rooms/general/messages$")


def stored_texts(server: ServerProcess) -> list[str]:
    return [m["text"] for m in stored_messages(server)]


def send_again_after_an_error(tab: Any, text: str) -> None:
    """The send failed: the page says so and keeps the text; Enter sends it again."""
    box = tab.page.locator("#input")
    expect(tab.page.locator("#status")).not_to_have_text("", timeout=WAIT_MS)
    expect(box).to_have_value(text)
    box.press("Enter")
    expect(box).to_have_value("", timeout=WAIT_MS)
    expect(tab.page.locator("#status")).to_have_text("", timeout=WAIT_MS)


def test_a_post_whose_answer_was_lost_is_stored_once_when_sent_again(
    start_server: Callable[..., ServerProcess], browser: Any
) -> None:
    chat_server = start_server(workers=2)
    problems: list[str] = []
    tab = open_tab("A", browser, chat_server.url, problems)
    try:
        keys: list[str | None] = []

        def lose_the_first_answer(route: Any) -> None:
            if route.request.method != "POST":
                route.continue_()
                return
            keys.append(route.request.headers.get("idempotency-key"))
            if len(keys) == 1:
                route.fetch()  # the server stores it ...
                route.abort("connectionreset")  # ... and the answer never arrives
            else:
                route.continue_()

        tab.page.route(MESSAGES_URL, lose_the_first_answer)
        text = "sent twice, stored once"
        box = tab.page.locator("#input")
        box.fill(text)
        box.press("Enter")
        wait_for_message(tab, text)  # it was stored: the live stream brings it
        send_again_after_an_error(tab, text)
        wait_for_message(tab, text)
        assert stored_texts(chat_server) == [text]
        assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
        # The next message is another message, with a key of its own.
        send(tab, text)
        expect(message_texts(tab, text)).to_have_count(2)
        assert len(keys) == 3 and keys[2] and keys[2] != keys[0], keys
        assert stored_texts(chat_server) == [text, text]
        # Only the POST cut on purpose failed.
        others = [p for p in problems if not ("net::ERR_" in p and "/messages" in p)]
        assert others == [], "\n".join(problems)
    finally:
        tab.context.close()


def test_a_websocket_message_whose_ack_was_lost_is_stored_once_when_sent_again(
    start_server: Callable[..., ServerProcess], browser: Any
) -> None:
    chat_server = start_server(workers=2)
    keys: list[str | None] = []  # of every try, over the WebSocket or by POST
    lost = False

    def drop_before_the_ack(socket: Any) -> None:
        server = socket.connect_to_server()
        cut = False

        def to_server(payload: Any) -> None:
            nonlocal lost, cut
            server.send(payload)
            frame = json.loads(payload) if isinstance(payload, str) else {}
            if frame.get("type") == "message":
                keys.append(frame.get("key"))
                if not lost:
                    # The server has it; the page's connection drops before the ack.
                    lost = cut = True
                    socket.close()

        def to_page(payload: Any) -> None:
            if not cut:
                socket.send(payload)

        socket.on_message(to_server)
        server.on_message(to_page)

    def on_request(request: Any) -> None:
        if request.method == "POST" and MESSAGES_URL.search(request.url):
            keys.append(request.headers.get("idempotency-key"))

    problems: list[str] = []
    context = browser.new_context()
    try:
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.on(
            "console", lambda msg: msg.type in ("error", "warning") and problems.append(msg.text)
        )
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", on_request)
        page.route_web_socket(re.compile(WS_PATH), drop_before_the_ack)
        page.goto(f"{chat_server.url}/?transport=ws", timeout=PAGE_LOAD_MS)
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
        tab = Tab("B", context, page, "?", problems)

        text = "acked once"
        box = page.locator("#input")
        box.fill(text)
        box.press("Enter")
        wait_for_message(tab, text)  # stored: the page's next connection replays it
        send_again_after_an_error(tab, text)
        wait_for_message(tab, text)
        assert stored_texts(chat_server) == [text]
        assert len(keys) == 2 and keys[0] and keys[0] == keys[1], keys
        others = [p for p in problems if "net::ERR_" not in p]
        assert others == [], "\n".join(problems)
    finally:
        context.close()
