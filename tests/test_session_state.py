"""``GET /api/session`` says who the caller is: signed in by the application
(until when) or anonymous, and whether the server lets it change its name.
In-process, real tokens, real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .signing import SECRET, claims, sign
from .support import error_of
from .test_signin import bearer

pytestmark = pytest.mark.openapi


async def app_client(make_app: Any, aiohttp_client: Any, **settings: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, **settings)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def renames(client: Any, headers: dict[str, str] | None = None) -> bool:
    """Whether ``PUT /api/session`` renames the caller (else it is 403)."""
    resp = await client.put("/api/session", json={"name": "Someone"}, headers=headers)
    if resp.status == 403:
        await error_of(resp, 403)
        return False
    assert resp.status == 200, await resp.text()
    return True


async def test_the_session_says_whether_it_signed_in_and_whether_it_may_rename(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    me = await (await client.get("/api/session")).json()
    assert me["user_id"].startswith("u-")
    assert (me["signed_in"], me["expires_at"], me["can_rename"]) == (False, None, True)
    assert await renames(client)

    # Signed in through the session, with a name in the token: it is the token's.
    exp = int(time.time()) + 600
    assert (await client.post("/api/auth", json={"token": sign(claims(exp=exp, name="Al"))})).ok
    me = await (await client.get("/api/session")).json()
    assert me == {
        "user_id": "alice",
        "name": "Al",
        "signed_in": True,
        "expires_at": exp,
        "can_rename": False,
    }
    assert not await renames(client)

    # Without a name in the token the user keeps a name of its own.
    assert (await client.post("/api/auth", json={"token": sign(claims(sub="bob"))})).ok
    me = await (await client.get("/api/session")).json()
    assert (me["user_id"], me["signed_in"], me["can_rename"]) == ("bob", True, True)
    assert await renames(client)

    # A program's Bearer token is the same.
    token = bearer(sign(claims(sub="carol", exp=exp, name="Carol")))
    me = await (await client.get("/api/session", headers=token)).json()
    assert (me["user_id"], me["signed_in"], me["expires_at"]) == ("carol", True, exp)
    assert me["can_rename"] is False and not await renames(client, token)

    # Signed out: anonymous again.
    assert (await client.delete("/api/auth")).status == 204
    me = await (await client.get("/api/session")).json()
    assert me["user_id"].startswith("u-") and me["signed_in"] is False


async def test_where_anonymous_callers_only_read_they_may_not_rename(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client, anonymous="read")
    me = await (await client.get("/api/session")).json()
    assert (me["signed_in"], me["can_rename"]) == (False, False)
    assert not await renames(client)
