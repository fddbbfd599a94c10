"""The page, its icon, and the operators' endpoints (health, metrics, this
document), as the document describes them."""

from __future__ import annotations

from .operations import answer, operation
from .schemas import Schema, ref

PAGE = "page"
OPERATORS = "operators"
PUBLIC: list[dict[str, list[str]]] = [{}]  # no credentials
NOT_MODIFIED = {"description": "not modified since the copy the client has"}
# What aiohttp's file responses answer a Range or a conditional request.
FILE = {
    206: {"description": "the range asked for"},
    304: NOT_MODIFIED,
}


def site_paths() -> dict[str, dict[str, Schema]]:
    return {
        "/": {"get": page("page", "The chat page, in the default room", room=False)},
        "/rooms/{room}": {"get": page("roomPage", "The chat page of a room", room=True)},
        "/favicon.ico": {
            "get": operation(
                "favicon",
                "The icon",
                tag=PAGE,
                ok={200: {"description": "the icon", "content": {"image/*": {}}}, **FILE},
                errors_={416: "a range outside the file"},
                security=PUBLIC,
                redis=False,
            )
        },
        "/healthz": {
            "get": operation(
                "health",
                "Whether this worker serves and reaches Redis (any Host is accepted)",
                tag=OPERATORS,
                ok={200: answer("healthy", ref("Health"))},
                errors_={},
                security=PUBLIC,
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics of the instance, summed over its workers",
                tag=OPERATORS,
                description="Any Host is accepted.",
                ok={
                    200: {
                        "description": "the Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                errors_={401: "`metrics_token` is set and was not sent (`unauthorized`)"},
                security=[{"metricsToken": []}, {}],
                redis=False,
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                tag=OPERATORS,
                description="Cached for a day; revalidate with `If-None-Match`.",
                ok={
                    200: answer(
                        "the OpenAPI document",
                        {"type": "object"},
                        ETag={"schema": {"type": "string"}, "required": True},
                    ),
                    304: NOT_MODIFIED,
                },
                errors_={},
                security=PUBLIC,
                redis=False,
            )
        },
    }


def page(operation_id: str, summary: str, *, room: bool) -> Schema:
    return operation(
        operation_id,
        summary,
        tag=PAGE,
        parameters=["room"] if room else [],
        ok={
            200: {
                "description": "the page",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            **FILE,
        },
        errors_=errors_of_page(room),
        security=PUBLIC,
        redis=False,
    )


def errors_of_page(room: bool) -> dict[int, str]:
    found = {416: "a range outside the file"}
    if room:
        found[404] = "an invalid room name"
    return found
