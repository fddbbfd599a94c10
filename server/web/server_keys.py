"""Who calls the server API: the key a request's ``Authorization: Bearer`` names,
and whether it grants the scope the route needs.

A request's secret is hashed (SHA-256) and compared, in constant time
(:func:`hmac.compare_digest`), with the hash of every configured key, all
of them whatever matched: neither the time taken nor its length tells which
key came close, or how long any secret is. No key, or a key none matches,
is 401 ``unauthorized`` (with ``WWW-Authenticate: Bearer``); a key without
the route's scope is 403 ``scope``. Neither repeats what was sent.

The server API's requests are counted here too, by route (the template,
``/server/v1/rooms/{room}``, never the path) and status.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ..common.api_keys import ApiKey, Scope
from ..common.metrics import Metrics
from ..core.errors import ChatError, Unauthorized

SERVER_API_PREFIX = "/server/v1/"
# Methods counted by name (any other is "other": a client cannot add series).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# A handler of the server API: the request, and the key that called it.
KeyHandler = Callable[[web.Request, ApiKey], Awaitable[web.StreamResponse]]


class MissingScope(ChatError, status=403, code="scope"):
    """The key is known, and does not grant what the route needs."""


def is_server_api(path: str) -> bool:
    return path.startswith(SERVER_API_PREFIX)


class ServerKeys:
    """The configured keys, checked against each request's Bearer secret."""

    __slots__ = ("_digests",)

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._digests = [(key.digest, key) for key in keys]

    def caller(self, request: web.Request, scope: Scope) -> ApiKey:
        """The key the request names, if it grants ``scope``; Unauthorized or MissingScope."""
        scheme, _, secret = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("the server API needs Authorization: Bearer <server API key>")
        given = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest, key in self._digests:
            if hmac.compare_digest(given, digest):
                found = key  # (and on: every key is compared)
        if found is None:
            raise Unauthorized("unknown server API key")
        if scope not in found.scopes:
            raise MissingScope(f"this key does not have the {scope!r} scope")
        return found

    def guard(self, scope: Scope, handler: KeyHandler) -> Handler:
        """``handler`` behind the key check: it runs only for a key with ``scope``."""

        async def checked(request: web.Request) -> web.StreamResponse:
            return await handler(request, self.caller(request, scope))

        return checked


ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def count_requests(metrics: Metrics) -> ResponseHook:
    """An ``on_response_prepare`` hook that counts the server API's answers,
    by method, route template and status (``other``: a path it has no route for)."""

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        if not is_server_api(request.path):
            return
        route = request.match_info.route.resource
        template = route.canonical if route is not None else ""
        if not is_server_api(template):
            template = "other"
        method = request.method if request.method in _METHODS else "other"
        metrics.server_api_request(method, template, response.status)

    return count
