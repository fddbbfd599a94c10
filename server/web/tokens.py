"""Sign-in tokens: a JWT checked against the configured key, then its claims
made an :class:`server.core.identity.Identity`.

The algorithm comes from the key, never from the token: HS256 for
``auth_jwt_secret``; for ``auth_jwt_public_key`` the key's kind (RSA RS256,
EC P-256 ES256, Ed25519 EdDSA); for ``auth_jwks_url`` each published key's
own. A token signed otherwise (``alg: none``, HS256 with the public key's
PEM as its secret) is refused like any forgery. Nothing here logs, and no
error carries, the token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp
import jwt

from ..common.auth_keys import HMAC_ALGORITHM, read_public_key
from ..common.config import Config
from ..core.errors import InvalidToken, TokenExpired
from ..core.identity import Identity, identity_from_claims
from .jwks import JWKSKeys

# Far more than a token with its most grants needs.
TOKEN_MAX_CHARS = 16384

# What each of PyJWT's refusals says, in the client's terms (subclasses first).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf or iat)"),
    (jwt.InvalidAudienceError, "the token is for another audience (aud)"),
    (jwt.InvalidIssuerError, "the token is from another issuer (iss)"),
    (jwt.InvalidAlgorithmError, "the token is not signed with {algorithm}"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.DecodeError, "the token is not a well-formed JWT"),
)


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> tuple[Any, str]:
        """The key that verifies a token naming ``kid``, and its algorithm."""


class FixedKey:
    """One configured key: an HMAC secret or a public key."""

    def __init__(self, key: Any, algorithm: str) -> None:
        self.key, self.algorithm = key, algorithm

    async def key_for(self, kid: str | None) -> tuple[Any, str]:
        return self.key, self.algorithm


class TokenVerifier:
    """Verifies sign-in tokens; one per worker (:func:`open_verifier`)."""

    def __init__(
        self, keys: KeySource, *, audience: str = "", issuer: str = "", leeway_s: float = 0
    ) -> None:
        self.keys = keys
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway_s = leeway_s

    async def verify(self, token: object) -> Identity:
        """The identity a token proves; TokenExpired past its ``exp`` and the
        leeway, InvalidToken for anything else wrong with it."""
        if not isinstance(token, str) or not token or len(token) > TOKEN_MAX_CHARS:
            raise InvalidToken(f"a token is a JWT of at most {TOKEN_MAX_CHARS} characters")
        key, algorithm = await self.keys.key_for(_kid(token))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["exp", "sub"],
                    # Unset, a token's aud is not checked (PyJWT would refuse any).
                    "verify_aud": self.audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token has no {exc.claim}") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(_reason(exc).format(algorithm=algorithm)) from None
        return identity_from_claims(claims)


def _kid(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise InvalidToken("the token is not a well-formed JWT") from None
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("the token's kid must be a string")
    return kid


def _reason(exc: jwt.PyJWTError) -> str:
    return next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is invalid")


@contextlib.asynccontextmanager
async def open_verifier(config: Config) -> AsyncIterator[TokenVerifier | None]:
    """The verifier of the configured key source for the worker's lifetime,
    or None when none is configured (no token can be accepted)."""
    async with contextlib.AsyncExitStack() as stack:
        keys: KeySource
        if config.auth_jwks_url:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            keys = JWKSKeys(config.auth_jwks_url, http)
        elif config.auth_jwt_secret:
            keys = FixedKey(config.auth_jwt_secret.encode(), HMAC_ALGORITHM)
        elif config.auth_jwt_public_key:
            keys = FixedKey(*read_public_key(config.auth_jwt_public_key))
        else:
            yield None
            return
        yield TokenVerifier(
            keys,
            audience=config.auth_jwt_audience,
            issuer=config.auth_jwt_issuer,
            leeway_s=config.auth_leeway_s,
        )
