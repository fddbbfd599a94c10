"""The whole document, and ``GET /openapi.json`` that serves it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import hdrs, web

from ... import __version__
from ...common.config import Config
from .browser import browser_paths
from .operators import site_paths
from .rooms import rooms_paths, rooms_schemas
from .schemas import PARAMETERS, SECURITY_SCHEMES, schemas
from .server_api import server_paths

# Long-lived: the document changes only with the server's version or its
# configuration, and the ETag lets a client revalidate its copy for nothing.
CACHE_CONTROL = "public, max-age=86400"

DESCRIPTION = """\
A real-time chat server: the browser API (cookie sessions, or the application's sign-in
tokens), its live streams (Server-Sent Events and WebSocket, described in their
operations), and the server API for application backends.

Every error answers `{"error": {"code", "message"}}` with its HTTP status; a 429 says
when to try again in `Retry-After`."""


def build(config: Config) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every path the server serves, for ``config``'s limits."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "multiloop-chat",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "page", "description": "the chat page, for browsers"},
            {"name": "browser API", "description": "what the page (or a program) calls"},
            {"name": "server API", "description": "for the application's backends"},
            {"name": "operators", "description": "health, metrics and this document"},
        ],
        "paths": {
            **site_paths(),
            **browser_paths(config),
            **rooms_paths(),
            **server_paths(config),
        },
        "components": {
            "schemas": {**schemas(config), **rooms_schemas()},
            "parameters": PARAMETERS,
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


class OpenApiDocument:
    """``GET /openapi.json``: the document, encoded once per app; no session is
    read or written for it."""

    __slots__ = ("body", "etag")

    def __init__(self, config: Config) -> None:
        self.body = json.dumps(build(config), ensure_ascii=False).encode()
        self.etag = hashlib.sha256(self.body).hexdigest()[:32]

    async def get(self, request: web.Request) -> web.Response:
        headers = {hdrs.CACHE_CONTROL: CACHE_CONTROL}
        if any(tag.value in (self.etag, "*") for tag in request.if_none_match or ()):
            response = web.Response(status=304, headers=headers)
        else:
            response = web.Response(
                body=self.body, content_type="application/json", headers=headers
            )
        response.etag = self.etag
        return response
