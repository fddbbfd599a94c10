"""The JSON error body every error answer has, as an aiohttp response or as raw bytes."""

from __future__ import annotations

import http
import json

from aiohttp import web

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


def raw_error(status: int, message: str, code: str, *, retry_after_s: int = 0) -> bytes:
    """A whole HTTP/1.1 error answer, the same JSON body, that ends its
    connection: for connections that never reach a handler (see :mod:`server.web.edge`)."""
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    retry = f"Retry-After: {retry_after_s}\r\n" if retry_after_s else ""
    return (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"Content-Type: application/json; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
        f"{retry}Connection: close\r\n\r\n{body}"
    ).encode()
