"""Domain errors, and the one helper that turns any error into the JSON error body."""

from __future__ import annotations

from aiohttp import web


class ChatError(Exception):
    """An error a client caused or can act on; carries its HTTP status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ChatError):
    status, code = 400, "bad_request"


class NotFound(ChatError):
    status, code = 404, "not_found"


class RequestTimeout(ChatError, TimeoutError):
    """A request body that did not arrive in time (see :mod:`server.edge`).

    Also a ``TimeoutError``: when no handler reads the body, aiohttp's read of
    what is left after the response swallows it and closes the connection.
    """

    status, code = 408, "request_timeout"


class TooLarge(ChatError):
    status, code = 413, "too_large"


class UnsupportedMediaType(ChatError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ChatError):
    status, code = 429, "rate_limited"


class TooManyStreams(ChatError):
    status, code = 429, "too_many_streams"


class Unavailable(ChatError):
    status, code = 503, "unavailable"


class StorageFull(ChatError):
    status, code = 503, "storage_full"


def storage_full() -> StorageFull:
    return StorageFull("Redis is full: nothing new can be stored until it has room again")


_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The body every error has: ``{"error": {"code": ..., "message": ...}}``."""
    response = web.json_response(
        {"error": {"code": code or _CODES.get(status, "error"), "message": message}},
        status=status,
        headers=headers,
    )
    if status == 408:
        # What is left of the request is not coming: the connection cannot carry another.
        response.force_close()
    return response


def error_payload(error: ChatError) -> dict[str, str]:
    return {"code": error.code, "message": error.message}
