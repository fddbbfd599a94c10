"""Who signed in: the sign-in token verifier of the app, opened for its lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..common.config import Config
from .tokens import TokenVerifier, open_verifier


class SignIn:
    """Sign-in with the application's tokens: the verifier of the configured
    key source while the app runs (:meth:`lifetime`), None without one (and
    before the app starts): then no token is accepted and callers are
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
