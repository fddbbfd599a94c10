"""Who signed in: the sign-in token verifier of the app, opened for its
lifetime, and the identity a request's ``Authorization: Bearer`` proves.

A token is read from the ``Authorization`` header only (never from the query
string, which ends up in logs and browser history), verified once per
request (a stream's, once for its whole life), and never logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import hdrs, web

from ..common.config import Config
from ..core.identity import Identity
from .tokens import TokenVerifier, open_verifier

# The identity the request's Bearer token proved, or None: verified once.
BEARER: web.RequestKey[Identity | None] = web.RequestKey("bearer")
API_PREFIX = "/api/"


class SignIn:
    """Sign-in with the application's tokens: the verifier of the configured
    key source while the app runs (:meth:`lifetime`), None without one (and
    before the app starts): then no token is read and callers are
    anonymous, as the settings say."""

    __slots__ = ("config", "verifier")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier: TokenVerifier | None = None

    def lifetime(self) -> Callable[[web.Application], AsyncIterator[None]]:
        """The app's ``cleanup_ctx`` entry that opens the verifier (a JWKS
        client's HTTP session with it) and closes it with the app."""

        async def verifier_open(app: web.Application) -> AsyncIterator[None]:
            async with open_verifier(self.config) as verifier:
                self.verifier = verifier
                try:
                    yield
                finally:
                    self.verifier = None

        return verifier_open

    async def check_bearer(self, request: web.Request) -> None:
        """Verify an ``/api/`` request's Bearer token before its handler runs
        (InvalidToken or TokenExpired refuse it, before anything is written);
        :func:`bearer` then gives its identity."""
        identity = None
        verifier = self.verifier
        if verifier is not None and request.path.startswith(API_PREFIX):
            scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
            if scheme.lower() == "bearer":
                identity = await verifier.verify(token.strip())
        request[BEARER] = identity


def bearer(request: web.Request) -> Identity | None:
    """The identity the request's Bearer token proved, None without one."""
    return request.get(BEARER)
