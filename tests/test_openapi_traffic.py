"""Every documented route, asked for real on a two-worker server, answers as
the document says: a success and an error each, every response validated
with openapi-core (:mod:`tests.openapi_check`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
import pytest

from server.common.config import Config
from server.web.openapi import build

from .openapi_check import Contract
from .signing import SECRET, claims, sign
from .support import ServerProcess

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

METRICS_TOKEN = "m" * 32
SERVER_SECRET = "s" * 40
READ_SECRET = "r" * 40
EVIL = {"Origin": "http://evil.example"}
ROOM = "/api/rooms/general"
# What a part of the API needs to exist in this build (a setting of its own).
SERVER_API = "server_api_keys" in Config.model_fields
EDITS = "edit_window_s" in Config.model_fields


def operations(contract: Contract, wanted: Callable[[str], bool]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in contract.document["paths"].items()
        for method in item
        if wanted(path)
    }


def assert_exercised(contract: Contract, expected: Iterable[tuple[str, str]]) -> None:
    """Each operation was checked answering a success and an error."""
    for method, path in sorted(expected):
        statuses = {s for (m, p, s) in contract.checked if (m, p) == (method, path)}
        assert any(s < 400 for s in statuses), (method, path, statuses)
        assert any(s >= 400 for s in statuses), (method, path, statuses)


@contextlib.asynccontextmanager
async def client(base: str, contract: Contract, **kwargs: Any) -> AsyncIterator[Any]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(
        base, cookie_jar=jar, middlewares=(contract,), **kwargs
    ) as session:
        yield session


async def expect(session: Any, method: str, path: str, status: int, **kwargs: Any) -> Any:
    """The request's answer (validated by the session's contract), which must be ``status``."""
    async with session.request(method, path, **kwargs) as resp:
        body = await resp.read()
        assert resp.status == status, (method, path, body[:300])
        return resp, body


def is_browser_side(path: str) -> bool:
    return not path.startswith("/server/v1/") and (EDITS or not path.endswith("/{id}"))


async def test_every_page_browser_and_operator_route_answers_as_documented(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        workers=2,
        env={
            "CHAT_AUTH_JWT_SECRET": SECRET,
            "CHAT_METRICS_TOKEN": METRICS_TOKEN,
            "CHAT_RATE_LIMIT_PER_S": "0.01",
            "CHAT_RATE_LIMIT_BURST": "8",
        },
    )
    contract = Contract(build(Config()))
    async with client(server.url, contract) as alice, client(server.url, contract) as carol:
        await pages_and_operators(alice)
        posted = await session_and_messages(alice)
        await streams(alice)
        await sign_in_and_out(carol)
        await spend_a_budget(carol)
        if EDITS:
            await edit_and_delete(alice, carol, posted)
    assert_exercised(contract, operations(contract, is_browser_side))


async def pages_and_operators(alice: Any) -> None:
    for path in ("/", "/rooms/general", "/favicon.ico", "/healthz", "/openapi.json"):
        await expect(alice, "GET", path, 200)
        await expect(alice, "POST", path, 405)
    await expect(alice, "GET", "/rooms/No-Such", 404)
    resp, _ = await expect(alice, "GET", "/openapi.json", 200)
    etag = {"If-None-Match": resp.headers["ETag"]}
    await expect(alice, "GET", "/openapi.json", 304, headers=etag)
    await expect(alice, "GET", "/metrics", 401)
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    await expect(alice, "GET", "/metrics", 200, headers=metrics)


async def session_and_messages(alice: Any) -> bytes:
    """The session, posting (each refusal), history and presence; the first message posted."""
    await expect(alice, "GET", "/api/session", 200)
    await expect(alice, "GET", "/api/session", 401, headers={"Authorization": "Bearer nope"})
    await expect(alice, "GET", "/api/session", 400, headers={"Host": "evil.example"})
    await expect(alice, "PUT", "/api/session", 200, json={"name": "Alice"})
    await expect(alice, "PUT", "/api/session", 400, json={"name": " "})
    await expect(alice, "PUT", "/api/session", 403, json={"name": "Eve"}, headers=EVIL)
    messages = f"{ROOM}/messages"
    _, posted = await expect(alice, "POST", messages, 201, json={"text": "hello"})
    await expect(alice, "POST", messages, 201, data={"text": "a form"})
    key = {"Idempotency-Key": "openapi-1"}
    await expect(alice, "POST", messages, 201, json={"text": "once"}, headers=key)
    resp, _ = await expect(alice, "POST", messages, 201, json={"text": "once"}, headers=key)
    assert resp.headers["Idempotent-Replayed"] == "true"
    await expect(alice, "POST", messages, 400, json={"text": " "})
    await expect(alice, "POST", messages, 413, json={"text": "x" * 2001})
    plain = {"Content-Type": "text/plain"}
    await expect(alice, "POST", messages, 415, data=b"hi", headers=plain)
    await expect(alice, "POST", messages, 403, json={"text": "hi"}, headers=EVIL)
    await expect(alice, "POST", "/api/rooms/No-Such/messages", 404, json={"text": "hi"})
    await expect(alice, "GET", f"{messages}?limit=10", 200)
    await expect(alice, "GET", f"{messages}?before=bogus", 400)
    await expect(alice, "GET", "/api/rooms/No-Such/messages", 404)
    await expect(alice, "GET", f"{ROOM}/online", 200)
    await expect(alice, "POST", f"{ROOM}/typing", 204)
    await expect(alice, "POST", f"{ROOM}/typing", 204, json={})
    await expect(alice, "POST", "/api/rooms/No-Such/typing", 404)
    await expect(alice, "POST", f"{ROOM}/typing", 400, json=[1])
    await expect(alice, "GET", f"{ROOM}/online?limit=0", 400)
    first = json.loads(posted)["message"]["id"]
    await expect(alice, "PUT", f"{ROOM}/read", 200, json={"id": first})
    await expect(alice, "PUT", f"{ROOM}/read", 400, json={"id": "bogus"})
    await expect(alice, "PUT", "/api/rooms/No-Such/read", 404, json={"id": first})
    await expect(alice, "GET", "/api/rooms", 200)
    await expect(alice, "GET", "/api/rooms", 401, headers={"Authorization": "Bearer nope"})
    return posted


async def streams(alice: Any) -> None:
    """An SSE response and a WebSocket's 101 (their headers checked), and their refusals."""
    async with alice.get(f"{ROOM}/events") as sse:
        assert sse.status == 200
        assert (await sse.content.readline()).startswith(b"retry:")
    await expect(alice, "GET", f"{ROOM}/events", 400, headers={"Last-Event-ID": "bogus"})
    ws = await alice.ws_connect(f"{ROOM}/ws")
    await ws.send_json({"type": "message", "text": "over ws", "ref": 1})
    while (frame := await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    assert frame["ref"] == 1
    await ws.close()
    await expect(alice, "GET", f"{ROOM}/ws", 400)  # (not an upgrade)
    await expect(alice, "GET", f"{ROOM}/ws?since=bogus", 400)


async def sign_in_and_out(carol: Any) -> None:
    token = sign(claims(sub="carol", name="Carol"))
    await expect(carol, "POST", "/api/auth", 200, json={"token": token})
    await expect(carol, "POST", "/api/auth", 401, json={"token": "not.a.token"})
    plain = {"Content-Type": "text/plain"}
    await expect(carol, "POST", "/api/auth", 415, data=token, headers=plain)
    await expect(carol, "POST", "/api/auth", 400, json={"token": 7})
    await expect(carol, "DELETE", "/api/auth", 403, headers=EVIL)
    await expect(carol, "DELETE", "/api/auth", 204)


async def spend_a_budget(carol: Any) -> None:
    """A user's budget spent: 429 with Retry-After."""
    spender = {"Authorization": f"Bearer {sign(claims(sub='spender'))}"}
    for _ in range(20):
        async with carol.post(f"{ROOM}/messages", json={"text": "more"}, headers=spender) as resp:
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 0
                return
            assert resp.status == 201
    pytest.fail("the budget was never spent")


async def edit_and_delete(alice: Any, other: Any, posted: bytes) -> None:
    """The author edits and deletes its message; another user may not."""
    messages = f"{ROOM}/messages"
    path = f"{messages}/{json.loads(posted)['message']['id']}"
    _, body = await expect(alice, "PATCH", path, 200, json={"text": "hello again"})
    assert "edited" in json.loads(body)["message"]
    await expect(other, "PATCH", path, 403, json={"text": "mine now"})
    await expect(alice, "PATCH", f"{messages}/bogus", 400, json={"text": "x"})
    await expect(other, "DELETE", path, 403)
    await expect(alice, "DELETE", path, 204)
    await expect(alice, "DELETE", path, 404)


@pytest.mark.skipif(not SERVER_API, reason="this build has no server API")
async def test_every_server_api_route_answers_as_documented(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    settings = tmp_path / "chat.toml"
    settings.write_text(
        f'server_api_keys = ["all:{SERVER_SECRET}:publish,read,moderate", '
        f'"reader:{READ_SECRET}:read"]\n'
    )
    server = start_server(workers=2, args=["--config", str(settings)])
    contract = Contract(build(Config()))
    full = {"Authorization": f"Bearer {SERVER_SECRET}"}
    reader = {"Authorization": f"Bearer {READ_SECRET}"}
    wrong = {"Authorization": "Bearer " + "w" * 40}
    v1 = "/server/v1"
    async with client(server.url, contract) as api:
        messages = f"{v1}/rooms/lobby/messages"
        _, body = await expect(
            api, "POST", messages, 201, headers=full, json={"text": "hi", "user_id": "alice"}
        )
        await expect(api, "POST", messages, 401, json={"text": "hi"})
        await expect(api, "POST", messages, 403, headers=reader, json={"text": "hi"})
        await expect(api, "POST", messages, 400, headers=full, json={"text": 7})
        broadcast = f"{v1}/broadcast"
        await expect(
            api,
            "POST",
            broadcast,
            200,
            headers=full,
            json={"rooms": ["lobby", "other"], "text": "all"},
        )
        await expect(api, "POST", broadcast, 400, headers=full, json={"rooms": [], "text": "none"})
        await expect(api, "GET", f"{v1}/rooms?limit=10", 200, headers=reader)
        await expect(api, "GET", f"{v1}/rooms", 401, headers=wrong)
        await expect(api, "GET", f"{v1}/rooms/lobby", 200, headers=reader)
        await expect(api, "GET", f"{v1}/rooms/never-used", 404, headers=reader)
        await expect(api, "GET", f"{messages}?limit=5", 200, headers=reader)
        await expect(api, "GET", f"{messages}?before=bogus", 400, headers=reader)
        await expect(api, "GET", f"{v1}/rooms/lobby/online", 200, headers=reader)
        await expect(api, "GET", f"{v1}/rooms/lobby/online?limit=0", 400, headers=reader)
        member = f"{v1}/rooms/lobby/members/alice"
        await expect(api, "PUT", member, 204, headers=full, json={"role": "member"})
        await expect(api, "PUT", member, 400, headers=full, json={"role": "king"})
        await expect(api, "DELETE", member, 204, headers=full)
        await expect(api, "DELETE", member, 403, headers=reader)
        user = f"{v1}/users/alice"
        await expect(api, "POST", f"{user}/disconnect", 202, headers=full, json={"reconnect": True})
        await expect(
            api, "POST", f"{user}/disconnect", 400, headers=full, json={"reconnect": "yes"}
        )
        await expect(api, "PUT", f"{user}/ban", 204, headers=full, json={"for_s": 60})
        await expect(api, "PUT", f"{user}/ban", 400, headers=full, json={"for_s": "soon"})
        await expect(api, "DELETE", f"{user}/ban", 204, headers=full)
        await expect(api, "DELETE", f"{user}/ban", 401)
        if EDITS:
            one = f"{messages}/{json.loads(body)['message']['id']}"
            await expect(api, "DELETE", one, 403, headers=reader)
            await expect(api, "DELETE", one, 204, headers=full)
            await expect(api, "DELETE", one, 404, headers=full)

    def server_side(path: str) -> bool:
        return path.startswith("/server/v1/") and (EDITS or not path.endswith("/{id}"))

    assert_exercised(contract, operations(contract, server_side))
