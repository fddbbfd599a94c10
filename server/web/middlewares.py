"""The edge of the app: the one middleware, and what aiohttp asks before it.

Every error becomes a JSON body; unknown hosts and cross-site writes are refused."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection

import aiohttp_session
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import ResponseError

from ..common.config import Config
from ..common.hosts import Authority, parse_host, parse_origin
from ..core.errors import ChatError, Unavailable, storage_full
from ..store.failures import UNREACHABLE, is_out_of_memory
from .addresses import Proxies, from_client
from .aiohttp_compat import send_continue
from .responses import error_response
from .server_keys import is_server_api
from .signin import SignIn

log = logging.getLogger(__name__)

_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def guard(
    config: Config, redis_errors: ThrottledErrorLog, sign_in: SignIn | None = None
) -> Middleware:
    """The middleware every request passes first, in one coroutine frame (a
    frame per middleware would be held by every open stream).

    In order: the client's address from trusted proxies
    (:func:`~server.web.addresses.from_client`), a ``Host`` this server knows
    (:class:`KnownHosts`), no cross-site write (:func:`cross_site`), a
    good sign-in token when one is sent (:meth:`SignIn.check_bearer`); then
    every failure of the handler becomes ``{"error": {...}}`` with its
    status, and no traceback leaks (a failure of Redis is counted and
    logged by ``redis_errors``).
    """
    proxies = Proxies(config.trusted_proxies)
    known_hosts = KnownHosts(config)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            request = from_client(request, proxies)
            refused = unknown_host(request, known_hosts) or (
                # (The server API is for programs, with a key: no browser's to forge.)
                None if is_server_api(request.path) else cross_site(request, config)
            )
            if refused is not None:
                return refused
            if sign_in is not None:
                await sign_in.check_bearer(request)
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 (each kind is answered in _answer)
            return _answer(request, exc, redis_errors)

    return middleware


def sessions(storage: aiohttp_session.AbstractStorage, streams: Collection[str]) -> Middleware:
    """aiohttp-session's middleware, except for the streams (the routes at ``streams``).

    Its middleware saves a changed session on a plain response only (a
    stream saves its own, see :func:`~server.web.sessions.queue_save`), yet
    its coroutine frame would be held by every open stream: a stream gets
    the storage it reads sessions from, and its handler is called without
    a frame of this middleware's own.
    """
    saving = aiohttp_session.session_middleware(storage)

    @web.middleware
    def middleware(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in streams:
            request[aiohttp_session.STORAGE_KEY] = storage
            return handler(request)
        return saving(request, handler)

    return middleware


def _answer(
    request: web.Request, exc: Exception, redis_errors: ThrottledErrorLog
) -> web.StreamResponse:
    """The JSON error response for what a handler raised (a redirect is raised again)."""
    if isinstance(exc, ChatError):
        extra = dict(exc.headers)  # WWW-Authenticate for a bad token
        if exc.retry_after:
            extra["Retry-After"] = str(int(exc.retry_after))
        return error_response(exc.status, exc.message, code=exc.code, headers=extra or None)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = exc.text if exc.status == 413 and exc.text else exc.reason
        return error_response(exc.status, message.removeprefix(f"{exc.status}: "), headers=headers)
    # (A cluster's RedisClusterException: no primary serves the key's slot
    # yet, during a failover.)
    if isinstance(exc, UNREACHABLE):
        redis_errors.record(exc)
        return error_response(503, "Redis is unavailable; retry shortly", code="unavailable")
    if isinstance(exc, ResponseError):
        # Input is validated before it reaches Redis, so this is Redis
        # refusing work (out of memory, read-only replica): retry later.
        # Full (maxmemory with noeviction): 503 storage_full until it has room.
        error = (
            storage_full()
            if is_out_of_memory(exc)
            else Unavailable("Redis refused the request; retry shortly")
        )
        redis_errors.record(exc, error.status)
        return error_response(error.status, error.message, code=error.code)
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal error", code="internal")


class ThrottledErrorLog:
    """Logs requests that failed on Redis: the first at once, then a count at
    most every ``interval`` seconds, so that an outage is visible without
    flooding the log with one line per request. Each is also counted, by
    ``count`` (the metrics')."""

    def __init__(self, interval: float = 10.0, count: Callable[[], None] = lambda: None) -> None:
        self.interval = interval
        self.count = count
        self._last = -interval
        self._suppressed = 0

    def record(self, exc: Exception, status: int = 503) -> None:
        """A request failed on Redis: answered ``status`` (0: its answer was cut short)."""
        self.count()
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        more = f" (and {self._suppressed} more since the last report)" if self._suppressed else ""
        outcome = f"answered {status}" if status else "cut an answer short"
        log.warning("%s: Redis failed: %s%s", outcome, exc, more)
        self._last, self._suppressed = now, 0


class KnownHosts:
    """The names a browser may use to reach this server.

    A page on another site can make its own name resolve to this server's
    address (DNS rebinding): its requests are then same-origin in the
    browser's eyes, with ``Host`` and ``Origin`` both naming that site.
    Refusing a ``Host`` the server does not know stops them. Known: IP
    addresses, ``localhost``, this machine's names, the address it listens
    on, and the hosts of ``public_origin`` and ``allowed_origins``.
    """

    def __init__(self, config: Config) -> None:
        origins = [parse_origin(o) for o in (config.public_origin, *config.allowed_origins)]
        names = {"localhost", config.host, socket.gethostname()}
        names |= {origin.authority.host for origin in origins if origin is not None}
        self.names = frozenset(name.lower() for name in names if name)

    def __contains__(self, host: str) -> bool:
        """Whether ``host`` (lower case, as :func:`~server.common.hosts.parse_host`
        gives it) is known."""
        if host in self.names or host.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True


# Asked for by machines rather than browsers, often by a name of the
# network's own (a service name): they need no protection from pages.
_ANY_HOST_PATHS = frozenset({"/healthz", "/metrics"})


def unknown_host(request: web.Request, known: KnownHosts) -> web.Response | None:
    """A 400 for a ``Host`` that is malformed (on any path), or that names a
    site this server does not know."""
    host = request.headers.get(hdrs.HOST)
    if host is None:
        return None
    # Empty is allowed (a request target without authority): it names no site.
    authority = parse_host(host) if host else Authority("", None)
    if authority is None:
        return error_response(400, f"malformed Host header {host!r}", code="bad_host")
    if request.path not in _ANY_HOST_PATHS and authority.host not in known:
        return error_response(
            400,
            f"unknown host {host!r}: set public_origin to the address browsers use",
            code="unknown_host",
        )
    return None


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect`` before the handler (aiohttp asks this of every route).

    aiohttp's own handler echoes the header into its 417, and a value that
    is not UTF-8 made that a 500 with a traceback, before any middleware.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11 or not expect:
        return None
    if expect.lower() == "100-continue":
        await send_continue(request)
        return None
    message = "the only Expect understood is 100-continue"
    return error_response(417, message, code="expectation_failed")


async def unrouted(request: web.Request) -> web.StreamResponse:
    """What no other route takes: 405 where the path exists, else 404.

    Routed here, rather than left to aiohttp, so that these requests too
    have :func:`expect_continue` for their ``Expect`` header.
    """
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


def cross_site(request: web.Request, config: Config) -> web.Response | None:
    """A 403 for a write or WebSocket upgrade that a browser sends from another site.

    Requests without an ``Origin`` header (programs, curl) are not cross-site
    browser requests and pass; the session cookie is ``SameSite=Lax`` too.
    """
    if request.method in _UNSAFE_METHODS or _is_websocket_upgrade(request):
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not _allowed(request, config, origin):
            return error_response(403, f"cross-site request from {origin!r} refused")
    return None


def _allowed(request: web.Request, config: Config, origin: str) -> bool:
    if origin in config.allowed_origins:
        return True
    if config.public_origin:
        return origin.lower() == config.public_origin.lower()
    # Malformed or opaque ("null"): not this server's. The scheme is not
    # compared: behind a TLS-terminating proxy the server sees http.
    parsed = parse_origin(origin)
    return (
        parsed is not None
        and parsed.scheme in ("http", "https")
        and parsed.authority == parse_host(request.host)
    )
