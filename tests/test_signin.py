"""Sign-in with the application's tokens on requests, in-process: the app's
verifier, Bearer tokens for programs, the browser's sign-in, and what
anonymous callers may do. Real tokens (tests/signing.py), real Redis."""

from __future__ import annotations

from typing import Any

from server.web import state as keys
from server.web.tokens import TokenVerifier

from .signing import SECRET, claims, sign


async def signed_in_client(make_app: Any, aiohttp_client: Any, **settings: Any) -> Any:
    app = await make_app(auth_jwt_secret=SECRET, **settings)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def test_the_app_verifies_tokens_with_the_configured_key_while_it_runs(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await signed_in_client(make_app, aiohttp_client)
    verifier = client.app[keys.SIGN_IN].verifier
    assert isinstance(verifier, TokenVerifier)
    assert (await verifier.verify(sign(claims()))).user_id == "alice"
    await client.close()
    assert client.app[keys.SIGN_IN].verifier is None


async def test_without_a_key_source_the_app_has_no_verifier(client: Any) -> None:
    assert client.app[keys.SIGN_IN].verifier is None
    assert (await client.get("/api/session")).status == 200
