"""How one operation of the document is declared: what it answers on
success, the errors of its own, and the errors every request of its kind
can get (added here, so that no operation forgets one)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .schemas import Schema, ref

JSON = "application/json"

# Every request, whatever its path: refused before any handler runs.
ANY_REQUEST = {
    400: "a malformed or unknown `Host` (`bad_host`, `unknown_host`)",
    405: "another method than the path's (`method_not_allowed`; `Allow` lists them)",
    417: "an `Expect` other than 100-continue (`expectation_failed`)",
    429: "too many open connections from the client's address (`too_many_connections`)",
    431: "request headers over 64 KiB (`headers_too_large`)",
    500: "an unexpected failure (`internal`); no traceback is shown",
}
# A request that has a body.
WITH_BODY = {
    408: "the body did not arrive within `request_timeout_s` (`request_timeout`)",
    413: "a body over `body_max_bytes` (`too_large`)",
}
# What Redis' trouble answers, for the operations that need it.
REDIS = {503: "Redis is unreachable or refused (`unavailable`), or full (`storage_full`): retry"}
# The browser API: POST, PUT, PATCH and DELETE from a page of another site.
CROSS_SITE = {403: "a cross-site request: an `Origin` that is not the server's (`forbidden`)"}
SIGN_IN = {
    401: "a bad sign-in token (`invalid_token`), an expired one (`token_expired`), or none "
    'where `anonymous = "none"` (`unauthorized`)'
}

_HEADERS: dict[int, dict[str, Schema]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    405: {"Allow": {"required": True, "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "required": True,
            "description": "seconds to wait before trying again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def json_content(schema: Schema) -> dict[str, Schema]:
    return {JSON: {"schema": schema}}


def answer(description: str, schema: Schema | None = None, **headers: Schema) -> Schema:
    """A success answer: JSON of ``schema`` (no body without one)."""
    response: Schema = {"description": description}
    if schema is not None:
        response["content"] = json_content(schema)
    if headers:
        response["headers"] = {name.replace("_", "-"): h for name, h in headers.items()}
    return response


def error(status: int, description: str) -> Schema:
    """An error answer: ``{"error": {"code", "message"}}``."""
    response: Schema = {"description": description, "content": json_content(ref("Error"))}
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def errors(*groups: Mapping[int, str]) -> dict[int, str]:
    """Error descriptions by status, merged; the same status in two groups
    is described by both."""
    merged: dict[int, str] = {}
    for group in groups:
        for status, text in group.items():
            merged[status] = f"{merged[status]}; {text}" if status in merged else text
    return merged


def operation(
    operation_id: str,
    summary: str,
    *,
    tag: str,
    ok: Mapping[int, Schema],
    errors_: Mapping[int, str],
    parameters: Iterable[str] = (),
    body: Schema | None = None,
    security: list[dict[str, list[str]]] | None = None,
    description: str | None = None,
    redis: bool = True,
) -> Schema:
    """One operation: ``ok`` its success answers by status, ``errors_`` its
    own errors (those of every request, of a body and of Redis are added)."""
    found = errors(ANY_REQUEST, WITH_BODY if body else {}, REDIS if redis else {}, errors_)
    responses: dict[str, Any] = {str(status): response for status, response in ok.items()}
    for status in sorted(found):
        responses[str(status)] = error(status, found[status])
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = [{"$ref": f"#/components/parameters/{name}"} for name in parameters]
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if security is not None:
        op["security"] = security
    op["responses"] = responses
    return op
