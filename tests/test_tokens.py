"""Sign-in tokens verified with each kind of configured key, and every forgery
and malformed token refused: real keys, real tokens, the verifier of the workers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from server.common.config import Config
from server.core.errors import ChatError, InvalidToken, TokenExpired
from server.core.identity import Identity, Role
from server.web.middlewares import ThrottledErrorLog, guard
from server.web.tokens import FixedKey, TokenVerifier, open_verifier

from .signing import ALGORITHMS, SECRET, b64, by_hand, claims, key, public_pem, sign


def config_for(algorithm: str, tmp_path: Path, **settings: Any) -> Config:
    """Settings that verify ``algorithm``: the secret, or a PEM file of key(algorithm)."""
    if algorithm == "HS256":
        return Config(auth_jwt_secret=SECRET, **settings)
    path = tmp_path / f"{algorithm}.pem"
    path.write_bytes(public_pem(key(algorithm)))
    return Config(auth_jwt_public_key=str(path), **settings)


async def verify(algorithm: str, tmp_path: Path, token: object, **settings: Any) -> Identity:
    async with open_verifier(config_for(algorithm, tmp_path, **settings)) as verifier:
        assert verifier is not None
        return await verifier.verify(token)


@pytest.mark.parametrize("algorithm", ["HS256", *ALGORITHMS])
async def test_a_token_signed_with_the_configured_key_gives_its_identity(
    algorithm: str, tmp_path: Path
) -> None:
    exp = int(time.time()) + 600
    token = sign(claims(exp=exp, name=" Alice  Smith ", rooms={"team-*": "member"}), algorithm)
    identity = await verify(algorithm, tmp_path, token)
    assert (identity.user_id, identity.name, identity.expires_at) == ("alice", "Alice Smith", exp)
    assert identity.role_in("team-a") is Role.MEMBER
    assert identity.role_in("general") is None


async def test_without_a_key_source_there_is_no_verifier() -> None:
    async with open_verifier(Config()) as verifier:
        assert verifier is None


@pytest.mark.parametrize("algorithm", ["HS256", *ALGORITHMS])
async def test_an_unsigned_token_alg_none_is_refused(algorithm: str, tmp_path: Path) -> None:
    for alg in ("none", "None", "NONE"):
        token = by_hand({"alg": alg, "typ": "JWT"}, claims(), None)
        with pytest.raises(InvalidToken):
            await verify(algorithm, tmp_path, token)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_hs256_signed_with_the_public_key_pem_is_refused(
    algorithm: str, tmp_path: Path
) -> None:
    """The classic confusion: the public key, which anyone has, as an HMAC secret."""
    pem = public_pem(key(algorithm))
    for mac_key in (pem, pem.strip()):
        token = by_hand({"alg": "HS256", "typ": "JWT"}, claims(), mac_key)
        with pytest.raises(InvalidToken, match=f"not signed with {algorithm}"):
            await verify(algorithm, tmp_path, token)


@pytest.mark.parametrize("algorithm", ["HS256", *ALGORITHMS])
async def test_a_token_signed_with_another_key_or_algorithm_is_refused(
    algorithm: str, tmp_path: Path
) -> None:
    others = [a for a in ["HS256", *ALGORITHMS] if a != algorithm]
    for other in others:  # right signature, wrong kind of key
        with pytest.raises(InvalidToken):
            await verify(algorithm, tmp_path, sign(claims(), other))
    if algorithm == "HS256":
        forged = by_hand({"alg": "HS256"}, claims(), b"another-secret-of-32-bytes-or-more!!")
    else:
        path = tmp_path / "other.pem"
        path.write_bytes(public_pem(key(algorithm, 1)))  # the server has key 1; signed with 0
        async with open_verifier(Config(auth_jwt_public_key=str(path))) as verifier:
            assert verifier is not None
            with pytest.raises(InvalidToken, match="signature does not verify"):
                await verifier.verify(sign(claims(), algorithm))
        # And a token whose claims were changed after signing.
        head, _, signature = sign(claims(), algorithm).split(".")
        forged = f"{head}.{b64(json.dumps(claims(sub='mallory')).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await verify(algorithm, tmp_path, forged)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": None}, "has no exp"),
        ({"sub": None}, "has no sub"),
        ({"sub": ""}, "has no sub|sub must be"),
        ({"sub": 42}, "invalid"),
        ({"sub": "u-3fa2c1"}, "must not start with 'u-'"),
        ({"exp": "9999999999"}, "exp must be a number"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iat": int(time.time()) + 3600}, "not valid yet"),
        ({"name": "Mallory\u202e"}, "name must not contain"),
        ({"rooms": {"Team-*": "member"}}, "rooms"),
        ({"rooms": {"team-*": "admin"}}, "rooms"),
    ],
)
async def test_claims_that_break_the_rules_are_refused(
    changes: dict[str, Any], match: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidToken, match=match):
        await verify("HS256", tmp_path, sign(claims(**changes)))


async def test_audience_and_issuer_are_checked_when_configured(tmp_path: Path) -> None:
    strict = {"auth_jwt_audience": "chat", "auth_jwt_issuer": "https://id.example.com/"}
    good = claims(aud="chat", iss="https://id.example.com/")
    assert (await verify("RS256", tmp_path, sign(good, "RS256"), **strict)).user_id == "alice"
    either = sign(claims(aud=["x", "chat"], iss=good["iss"]), "RS256")
    assert (await verify("RS256", tmp_path, either, **strict)).user_id == "alice"
    for bad in (
        {**good, "aud": "other"},
        {**good, "aud": None},
        {**good, "iss": "https://evil.example.com/"},
        {**good, "iss": None},
    ):
        with pytest.raises(InvalidToken):
            await verify("RS256", tmp_path, sign(claims(**bad), "RS256"), **strict)
    # Not configured: not checked, whatever the token says.
    assert await verify("RS256", tmp_path, sign(claims(aud="any", iss="any"), "RS256"))


async def test_a_token_past_exp_and_the_leeway_has_expired(tmp_path: Path) -> None:
    now = int(time.time())
    assert await verify("HS256", tmp_path, sign(claims(exp=now - 10)), auth_leeway_s=30)
    with pytest.raises(TokenExpired, match="expired") as expired:
        await verify("HS256", tmp_path, sign(claims(exp=now - 40)), auth_leeway_s=30)
    assert (expired.value.status, expired.value.code) == (401, "token_expired")
    with pytest.raises(TokenExpired):
        await verify("HS256", tmp_path, sign(claims(exp=now - 10)), auth_leeway_s=0)
    # nbf a little ahead of this clock: within the leeway.
    assert await verify("HS256", tmp_path, sign(claims(nbf=now + 10)), auth_leeway_s=30)


GARBAGE: list[object] = [
    None,
    42,
    b"bytes",
    "",
    "not a token",
    "a.b.c",
    "a.b",
    "....",
    "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",  # the payload is not JSON
    by_hand({"alg": "HS256"}, b"[1, 2]", SECRET.encode()),  # nor an object
    by_hand({"alg": "HS256"}, b'{"sub": "alice", "exp": NaN}', SECRET.encode()),
    by_hand({"alg": "HS256", "kid": 7}, claims(), SECRET.encode()),
    by_hand({"alg": "HS256", "crit": ["exp"]}, claims(), SECRET.encode()),
    by_hand({"alg": ["HS256"]}, claims(), SECRET.encode()),
    "x" * 100_000,
    "\u00e9.\u00e9.\u00e9",
]


@pytest.mark.parametrize("token", GARBAGE)
async def test_garbage_is_an_invalid_token(token: object, tmp_path: Path) -> None:
    with pytest.raises(InvalidToken) as refused:
        await verify("HS256", tmp_path, token)
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Values near the rules, so that many tokens get as far as their claims.
NEAR = st.sampled_from(
    ["alice", "chat", "u-1", "a" * 65, "Alice", "", "team-*", "*", "member", "admin", 1e300]
) | st.integers(int(time.time()) - 100, int(time.time()) + 100)
ROOMS = st.dictionaries(
    st.sampled_from(["team-*", "*", "x", "X", "-a", "a" * 33 + "*"]), NEAR | JSON
)
CLAIMS = st.dictionaries(
    st.sampled_from(["sub", "exp", "nbf", "iat", "name", "rooms", "aud", "iss", "jti"]),
    NEAR | JSON | ROOMS,
)


def test_whatever_a_signed_token_holds_it_is_an_identity_or_refused() -> None:
    verifier = TokenVerifier(FixedKey(SECRET.encode(), "HS256"), audience="chat")
    loop = asyncio.new_event_loop()
    outcomes: set[str] = set()

    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    @given(
        header=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), JSON),
        changes=CLAIMS,
        dropped=st.sets(st.sampled_from(["sub", "exp", "aud"]), max_size=1),
    )
    def case(header: dict[str, Any], changes: dict[str, Any], dropped: set[str]) -> None:
        payload = {**claims(aud="chat"), **changes}
        payload = {name: value for name, value in payload.items() if name not in dropped}
        token = by_hand({"alg": "HS256", **header}, payload, SECRET.encode())
        try:
            identity = loop.run_until_complete(verifier.verify(token))
        except (InvalidToken, TokenExpired) as exc:
            outcomes.add(exc.code)
            return
        assert isinstance(identity, Identity)
        outcomes.add("identity")

    try:
        case()
    finally:
        loop.close()
    assert {"identity", "invalid_token"} <= outcomes  # the rules were reached


async def test_nothing_logs_or_carries_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    tokens = [
        sign(claims()),
        sign(claims(exp=now - 100)),
        sign(claims(sub="u-x")),
        by_hand({"alg": "none"}, claims(), None),
        sign(claims(), "RS256"),
    ]
    for token in tokens:
        try:
            await verify("HS256", tmp_path, token)
        except ChatError as exc:
            shown = "".join(traceback.format_exception(exc))  # as a log would show it
            for part in filter(None, token.split(".")):
                assert part not in shown
    text = caplog.text + repr([record.__dict__ for record in caplog.records])
    for token in tokens:
        for part in filter(None, token.split(".")):
            assert part not in text


async def test_a_refused_token_is_answered_401_with_www_authenticate(
    aiohttp_client: Any,
) -> None:
    verifier = TokenVerifier(FixedKey(SECRET.encode(), "HS256"))

    async def handler(request: web.Request) -> web.Response:
        identity = await verifier.verify(request.headers.get("X-Token", ""))
        return web.json_response({"user_id": identity.user_id})

    app = web.Application(middlewares=[guard(Config(), ThrottledErrorLog())])
    app.router.add_get("/", handler)
    client: TestClient[Any, Any] = await aiohttp_client(app)
    expected = {"": "invalid_token", sign(claims(exp=int(time.time()) - 60)): "token_expired"}
    for token, code in expected.items():
        async with client.get("/", headers={"X-Token": token}) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json())["error"]["code"] == code
    async with client.get("/", headers={"X-Token": sign(claims())}) as response:
        assert response.status == 200 and "WWW-Authenticate" not in response.headers
