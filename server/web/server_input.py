"""What the server API reads from a request: its JSON body, user ids, room lists.

Stricter than the browser API, since its callers are programs: a body is a
JSON object (``application/json``) whose fields are the route's own, and a
field the route does not know is a 400 (a misspelt ``for_s`` must not ban
for ever). Every refusal says what was wrong, and comes before anything is
written.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aiohttp import web

from ..core.errors import BadRequest, UnsupportedMediaType
from ..core.model import ROOM_RE
from .views import json_body

ROOMS_MAX = 100  # rooms in one request


async def json_fields(
    request: web.Request, known: Collection[str], *, optional: bool = False
) -> dict[str, Any]:
    """The request's JSON object, with only ``known`` fields (``optional``:
    no body at all reads as ``{}``)."""
    if not request.body_exists:
        if optional:
            return {}
        raise BadRequest(f"send a JSON object with {', '.join(repr(k) for k in known)}")
    if request.content_type not in ("application/json", "application/octet-stream"):
        raise UnsupportedMediaType("the server API takes JSON bodies (application/json)")
    body = await json_body(request)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(
            f"unknown field {unknown[0]!r}; this route takes {', '.join(repr(k) for k in known)}"
        )
    return body


def room_list(value: Any, what: str = "'rooms'") -> list[str]:
    """1-100 distinct room names."""
    if not isinstance(value, list) or not 1 <= len(value) <= ROOMS_MAX:
        raise BadRequest(f"{what} must be a list of 1-{ROOMS_MAX} room names")
    for room in value:
        if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
            shown = repr(room)[:40] if isinstance(room, str) else f"a {type(room).__name__}"
            raise BadRequest(
                f"{what} holds {shown}, not a room name (1-32 of a-z, 0-9, '_' and '-')"
            )
    if len(set(value)) < len(value):
        raise BadRequest(f"{what} names a room twice")
    return value
