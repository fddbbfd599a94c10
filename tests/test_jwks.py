"""Keys from a JWKS URL: served by a real aiohttp server in the test, fetched
when a token names a new key, at most every 30 s for unknown ones, and still
verifying from the cache while the key server is down."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.warnings import InsecureKeyLengthWarning

from server.common.config import Config
from server.core.errors import InvalidToken, Unavailable
from server.web.jwks import JWKSKeys
from server.web.tokens import TokenVerifier, open_verifier

from .signing import SECRET, by_hand, claims, key, public_jwk, sign

RSA_A = public_jwk(key("RS256"), "a")
EC_B = public_jwk(key("ES256"), "b")


@dataclass
class KeyServer:
    """A JWKS endpoint: what it publishes, and how often it was asked."""

    published: Any = field(default_factory=lambda: {"keys": [RSA_A]})
    status: int = 200
    hits: int = 0
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/.well-known/jwks.json"))

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if isinstance(self.published, bytes):
            return web.Response(body=self.published, status=self.status)
        return web.json_response(self.published, status=self.status)

    async def start(self, port: int | None = None) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.handle)
        self.server = TestServer(app, port=port)
        await self.server.start_server()

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    served = KeyServer()
    await served.start()
    yield served
    await served.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def verifier(keys: JWKSKeys) -> TokenVerifier:
    return TokenVerifier(keys, leeway_s=30)


async def test_a_new_kid_fetches_again_and_unknown_ones_at_most_every_30_s(
    key_server: KeyServer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    keys = JWKSKeys(key_server.url, http, clock=clock)
    check = verifier(keys)
    assert (await check.verify(sign(claims(), "RS256", kid="a"))).user_id == "alice"
    await check.verify(sign(claims(), "RS256", kid="a"))
    assert key_server.hits == 1  # fetched when first needed, then cached

    key_server.published = {"keys": [RSA_A, EC_B]}  # the issuer adds a key
    clock.now += 31
    assert await check.verify(sign(claims(), "ES256", kid="b"))
    assert key_server.hits == 2  # the new kid fetched the keys again

    clock.now += 10
    with pytest.raises(InvalidToken, match="does not publish"):
        await check.verify(sign(claims(), "ES256", kid="c"))
    assert key_server.hits == 2  # a second unknown kid within 30 s: not fetched
    clock.now += 21
    with pytest.raises(InvalidToken):
        await check.verify(sign(claims(), "ES256", kid="c"))
    assert key_server.hits == 3

    key_server.published = {"keys": [EC_B]}  # the issuer retires key a
    clock.now += 31
    with pytest.raises(InvalidToken):
        await check.verify(sign(claims(), "ES256", kid="d"))
    assert key_server.hits == 4
    with pytest.raises(InvalidToken):  # gone with the fetch that replaced the keys
        await check.verify(sign(claims(), "RS256", kid="a"))
    assert await check.verify(sign(claims(), "ES256", kid="b"))
    assert key_server.hits == 4


async def test_tokens_waiting_for_the_same_new_kid_share_one_fetch(
    key_server: KeyServer, http: aiohttp.ClientSession
) -> None:
    check = verifier(JWKSKeys(key_server.url, http, clock=Clock()))
    token = sign(claims(), "RS256", kid="a")
    identities = await asyncio.gather(*(check.verify(token) for _ in range(20)))
    assert {identity.user_id for identity in identities} == {"alice"}
    assert key_server.hits == 1


async def test_with_the_key_server_down_cached_keys_go_on_verifying(
    key_server: KeyServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    check = verifier(JWKSKeys(key_server.url, http, clock=clock, timeout_s=2))
    token = sign(claims(), "RS256", kid="a")
    await check.verify(token)
    assert key_server.server is not None
    port = key_server.server.port
    await key_server.stop()

    clock.now += 60
    unknown = sign(claims(), "ES256", kid="b")
    with pytest.raises(Unavailable):  # cannot tell: answered 503, retry
        await check.verify(unknown)
    with pytest.raises(Unavailable):
        await check.verify(unknown)
    assert await check.verify(token)  # the cached key still verifies
    warnings = [r for r in caplog.records if "cannot be fetched" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per token
    assert "verifying with the 1 keys fetched before" in warnings[0].getMessage()

    key_server.published = {"keys": [RSA_A, EC_B]}
    await key_server.start(port)  # back, on the same address
    clock.now += 2  # after a failure it is tried again sooner than 30 s
    assert await check.verify(unknown)
    assert key_server.hits == 2
    for part in (*token.split("."), *unknown.split(".")):
        assert part not in caplog.text


async def test_only_keys_that_sign_with_a_public_key_algorithm_are_used(
    key_server: KeyServer, http: aiohttp.ClientSession
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    secret = base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode()
    key_server.published = {
        "keys": [
            {"kty": "oct", "kid": "h", "k": secret, "alg": "HS256"},  # public: anyone could sign
            public_jwk(weak, "weak"),
            {**public_jwk(key("RS256", 1), "enc"), "use": "enc", "alg": "RSA-OAEP"},
            {**public_jwk(key("ES256"), "e")},
            {k: v for k, v in public_jwk(key("EdDSA"), "o").items() if k != "alg"},
            {"kty": 5, "kid": "junk"},
            {"kty": "RSA", "kid": "junk2", "alg": ["RS256"]},
            {"kty": "RSA", "kid": 3},
            "not a key",
        ]
    }
    check = verifier(JWKSKeys(key_server.url, http, clock=Clock()))
    assert await check.verify(sign(claims(), "ES256", kid="e"))
    assert await check.verify(sign(claims(), "EdDSA", kid="o"))
    with pytest.raises(InvalidToken):
        await check.verify(by_hand({"alg": "HS256", "kid": "h"}, claims(), SECRET.encode()))
    with pytest.warns(InsecureKeyLengthWarning):
        signed_weakly = jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": "weak"})
    with pytest.raises(InvalidToken):
        await check.verify(signed_weakly)
    with pytest.raises(InvalidToken):  # the key says ES256: the token's alg does not count
        await check.verify(sign(claims(), "EdDSA", kid="e"))
    with pytest.raises(InvalidToken):  # two keys: a token must say which
        await check.verify(sign(claims(), "ES256"))
    assert key_server.hits == 1


async def test_a_token_without_kid_takes_the_only_key(
    key_server: KeyServer, http: aiohttp.ClientSession
) -> None:
    check = verifier(JWKSKeys(key_server.url, http, clock=Clock()))
    assert await check.verify(sign(claims(), "RS256"))


@pytest.mark.parametrize(
    ("published", "status"),
    [
        ({"keys": [RSA_A]}, 500),
        (b"not json", 200),
        (b"[]", 200),
        ({"keys": "a"}, 200),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, 200),
        (b'{"keys": []}' + b" " * (1024 * 1024), 200),
    ],
)
async def test_a_key_set_that_cannot_be_used_is_unavailable_not_a_bad_token(
    key_server: KeyServer,
    http: aiohttp.ClientSession,
    published: Any,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_server.published, key_server.status = published, status
    check = verifier(JWKSKeys(key_server.url, http, clock=Clock()))
    with pytest.raises(Unavailable):
        await check.verify(sign(claims(), "RS256", kid="a"))
    assert caplog.records and caplog.records[0].levelno == logging.WARNING


async def test_the_configured_jwks_url_verifies_tokens(key_server: KeyServer) -> None:
    config = Config(auth_jwks_url=key_server.url, auth_jwt_audience="chat")
    async with open_verifier(config) as check:
        assert check is not None
        assert await check.verify(sign(claims(aud="chat"), "RS256", kid="a"))
        with pytest.raises(InvalidToken):
            await check.verify(sign(claims(), "RS256", kid="a"))
