"""The keys a JWKS URL publishes (Auth0, Keycloak, ...), kept by ``kid``.

Fetched with aiohttp, so the worker's loop never waits on the key server,
when a token names a key that is not known yet; then again for another
unknown ``kid`` at most every ``refetch_s`` (after a failed fetch, sooner:
1, 2, 4... seconds up to that). Each successful fetch replaces the keys,
so a key the server no longer publishes stops verifying. While the key
server is down, the keys fetched before go on verifying.

Only keys that sign with a public-key algorithm are kept: a symmetric
(``oct``) key in a public document would let anyone sign tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from ..core.errors import InvalidToken, Unavailable

log = logging.getLogger(__name__)

REFETCH_S = 30.0
FETCH_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 1024 * 1024
# Public-key algorithms only; each key's own ``alg`` (or its kty and crv) says which.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPES = ("RSA", "EC", "OKP")
RSA_MIN_BITS = 2048


class BadJWKS(ValueError):
    """The document at the JWKS URL is not a key set this server can use."""


class JWKSKeys:
    """The keys of one JWKS URL, fetched through ``http`` when a token needs one."""

    def __init__(
        self,
        url: str,
        http: aiohttp.ClientSession,
        *,
        refetch_s: float = REFETCH_S,
        timeout_s: float = FETCH_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._http = http
        self._refetch_s = refetch_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._next_fetch = float("-inf")
        self._failures = 0  # fetches failed in a row
        # One fetch at a time; whoever waited for it looks again in what it brought.
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> tuple[jwt.PyJWK, str]:
        """The key named ``kid`` (no ``kid``: the only key, if there is one) and
        its algorithm; InvalidToken when the key server does not publish it,
        Unavailable when it could not be asked."""
        key = self._find(kid)
        if key is None:
            async with self._lock:
                key = self._find(kid)
                if key is None and self._clock() >= self._next_fetch:
                    await self._fetch()
                    key = self._find(kid)
        if key is not None:
            return key, key.algorithm_name
        if self._failures:
            raise Unavailable("the keys that verify tokens cannot be fetched; retry shortly")
        if kid is None:
            raise InvalidToken("the token names no key (kid)")
        raise InvalidToken("the token is signed with a key its issuer does not publish")

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    async def _fetch(self) -> None:
        try:
            keys = await self._download()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failures += 1
            wait = min(self._refetch_s, 2.0 ** (self._failures - 1))
            self._next_fetch = self._clock() + wait
            if self._failures == 1:  # once, until it works again
                log.warning(
                    "JWKS %s cannot be fetched (%s); %s",
                    self.url,
                    _reason(exc),
                    f"verifying with the {len(self._keys)} keys fetched before"
                    if self._keys
                    else "tokens cannot be verified until it can",
                )
            return
        if self._failures:
            log.info("JWKS %s fetched again after %d failures", self.url, self._failures)
        self._failures = 0
        self._next_fetch = self._clock() + self._refetch_s
        self._keys = keys

    async def _download(self) -> dict[str | None, jwt.PyJWK]:
        async with self._http.get(
            self.url, timeout=self._timeout, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise BadJWKS(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise BadJWKS(f"larger than {JWKS_MAX_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise BadJWKS("not JSON") from None
        return usable_keys(document)


def usable_keys(document: Any) -> dict[str | None, jwt.PyJWK]:
    """The signing keys of a JWKS document, by ``kid``; BadJWKS if there are none."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise BadJWKS('not a JWKS (no "keys" list)')
    candidates = [jwk for jwk in document["keys"] if _is_signing_key(jwk)]
    try:
        key_set = jwt.PyJWKSet.from_dict({"keys": candidates})
    except jwt.PyJWTError:
        key_set = None
    keys = {key.key_id: key for key in key_set or () if _strong(key)}
    if not keys:
        raise BadJWKS(f"no key for any of {', '.join(sorted(ALGORITHMS))}")
    return keys


def _is_signing_key(jwk: Any) -> bool:
    """What PyJWT can take without tripping over types, and what signs."""
    return (
        isinstance(jwk, dict)
        and jwk.get("kty") in _KEY_TYPES
        and jwk.get("use", "sig") == "sig"
        and ((isinstance(jwk.get("alg"), str) and jwk["alg"] in ALGORITHMS) or "alg" not in jwk)
        and isinstance(jwk.get("kid", ""), str)
        and isinstance(jwk.get("crv", ""), str)
    )


def _strong(key: jwt.PyJWK) -> bool:
    if key.algorithm_name not in ALGORITHMS:  # e.g. ES256K, from an EC key's curve
        return False
    size = getattr(key.key, "key_size", None)
    return key.key_type != "RSA" or (isinstance(size, int) and size >= RSA_MIN_BITS)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
