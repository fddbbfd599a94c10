"""``POST /api/auth`` and ``DELETE /api/auth``: a browser signs in with the
application's token, refreshes it, and signs out."""

from __future__ import annotations

from aiohttp import web

from ..core.errors import BadRequest, Banned, InvalidToken, UnsupportedMediaType
from ..store.connection_registry import ConnectionRegistry
from ..store.moderation_store import is_banned
from .message_input import json_object
from .sessions import Sessions
from .signin import expires_at


class AuthApi:
    """Signing a browser's session in and out, with what it takes."""

    __slots__ = ("registry", "sessions")

    def __init__(self, sessions: Sessions, registry: ConnectionRegistry) -> None:
        self.sessions = sessions
        self.registry = registry  # (the rooms a signed-out session's streams are in)

    async def sign_in(self, request: web.Request) -> web.Response:
        """``{"token"}``: the session becomes the token's user (a newer token
        for the same user refreshes it); ``{"user_id", "name", "expires_at"}``."""
        verifier = self.sessions.sign_in.verifier
        if verifier is None:
            raise InvalidToken("this server takes no sign-in tokens (no key is configured)")
        if request.content_type not in ("application/json", "application/octet-stream"):
            raise UnsupportedMediaType('send JSON (application/json): {"token": "..."}')
        try:
            text = (await request.read()).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("body is not valid UTF-8") from None
        token = json_object(text, "body").get("token")
        if not isinstance(token, str):
            raise BadRequest("'token' must be the sign-in token, a string")
        identity = await verifier.verify(token)
        if await is_banned(self.sessions.redis, identity.user_id):
            raise Banned("this user is banned")
        name = await self.sessions.sign_in_session(request, identity)
        body = {"user_id": identity.user_id, "name": name, "expires_at": expires_at(identity)}
        return web.json_response(body)

    async def sign_out(self, request: web.Request) -> web.Response:
        """The session ends: deleted, its cookie cleared, its streams ended
        (on every worker). 204 even without one."""
        ended = await self.sessions.sign_out(request)
        if ended is not None:
            await self.registry.signed_out(*ended)
        return web.Response(status=204)
