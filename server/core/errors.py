"""Domain errors: each kind says its HTTP status and code; the edge answers them
(:mod:`server.web.responses` builds the JSON error body)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar


class ChatError(Exception):
    """An error a client caused or can act on; carries its HTTP status and code.

    Each kind names its own: ``class NotFound(ChatError, status=404, code="not_found")``,
    and the headers its answers carry, if any (``headers={"WWW-Authenticate": ...}``).
    """

    status = 400
    code = "bad_request"
    headers: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init_subclass__(
        cls,
        *,
        status: int,
        code: str,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.code = status, code
        if headers is not None:
            cls.headers = MappingProxyType(dict(headers))

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ChatError, status=400, code="bad_request"):
    """A body, frame, header or parameter the server cannot take as it is."""


# RFC 6750: an expired token is an invalid one too, as far as the header goes.
_BEARER = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class InvalidToken(ChatError, status=401, code="invalid_token", headers=_BEARER):
    """A sign-in token that is malformed, forged, not yet valid, for another
    audience or issuer, or whose claims break the rules."""


class TokenExpired(ChatError, status=401, code="token_expired", headers=_BEARER):
    """A sign-in token past its ``exp`` (and the leeway allowed)."""


class Unauthorized(
    ChatError, status=401, code="unauthorized", headers={"WWW-Authenticate": "Bearer"}
):
    """No sign-in where this server needs one (``anonymous = "none"``)."""


class Forbidden(ChatError, status=403, code="forbidden"):
    """Something the caller's role (or being anonymous) does not allow."""


class Banned(ChatError, status=403, code="banned"):
    """The user is banned (everywhere, or in the room) until the ban ends."""


class EditWindow(ChatError, status=403, code="edit_window"):
    """A message older than ``edit_window_s``: its author may no longer edit it."""


class NotFound(ChatError, status=404, code="not_found"):
    """No such room name (or page)."""


class RequestTimeout(ChatError, TimeoutError, status=408, code="request_timeout"):
    """A request body that did not arrive in time (see :mod:`server.web.edge`).

    Also a ``TimeoutError``: when no handler reads the body, aiohttp's read of
    what is left after the response swallows it and closes the connection.
    """


class TooLarge(ChatError, status=413, code="too_large"):
    """A message text or a body over its limit."""


class UnsupportedMediaType(ChatError, status=415, code="unsupported_media_type"):
    """A body that is neither JSON nor a form."""


class IdempotencyConflict(ChatError, status=409, code="idempotency_conflict"):
    """An idempotency key whose first use, in another room, is still being
    stored (or failed without a word): retry shortly."""


class RateLimited(ChatError, status=429, code="rate_limited"):
    """A budget of the user's or of the client address's is spent (see ``retry_after``)."""


class TooManyStreams(ChatError, status=429, code="too_many_streams"):
    """The session or the client address holds as many connections (SSE or
    WebSocket) as it may; the code says "streams", as the interface does."""


class Unavailable(ChatError, status=503, code="unavailable"):
    """Redis cannot be reached or refused, or the worker is stopping: retry."""


class StorageFull(ChatError, status=503, code="storage_full"):
    """Redis is at its memory limit: nothing new can be stored."""


def storage_full() -> StorageFull:
    return StorageFull("Redis is full: nothing new can be stored until it has room again")


def error_payload(error: ChatError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}
