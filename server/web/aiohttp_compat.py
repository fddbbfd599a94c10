"""What the web side relies on of aiohttp beyond its documented API, in one place.

Checked on aiohttp 3.14.5 (written against 3.14); ``tests/test_compat_aiohttp.py``
fails when one of these changes, or when a private name of the edge's
handler becomes one of aiohttp's (a slot of the same name would silently
take the place of aiohttp's). Check them against a new aiohttp release.

- ``web.RequestHandler`` (exported by ``aiohttp.web``, not documented), for
  :class:`RequestHandlerBase` and :func:`protocol_factory`: its constructor
  ``(manager, *, loop, keepalive_timeout, access_log)``; that a handler
  joins its ``manager`` (the runner's ``web.Server``) when its connection
  is made, so that the runner's ``cleanup()`` shuts it down; its slots
  ``_request_count`` (grows by one within ``data_received`` for each request
  whose headers were parsed), ``_messages`` (the parsed requests and their
  payloads, newest last), ``_upgraded`` (the connection was switched to
  another protocol, a WebSocket), ``_waiter`` (set while the connection
  waits for its next request) and ``_loop``; and its public names
  ``force_close()``, ``peername`` and ``transport``, and ``data_received(b"")``
  (aiohttp parsing again what it had buffered).
- ``request.protocol`` (the request's ``RequestHandler``: :func:`protocol_of`),
  its ``writing_paused`` (public name, read as it is on the hot path) and
  ``_drain_helper()``, what aiohttp's own writers await while the
  transport has paused writing (:data:`drained`).
- ``request.writer`` and its ``output_size``, as aiohttp's own handler of
  ``Expect: 100-continue`` uses them (:func:`send_continue`).
- An uncompressed WebSocket frame is written to the transport whole, with
  no await between its parts: frames the hub writes straight to the
  transport never split one of aiohttp's.
- ``WebSocketResponse.can_prepare`` raises UnicodeEncodeError for a
  handshake header that is not UTF-8: it words its 400 with the header's
  value (:func:`can_upgrade`).
- A response gets some attributes only as it is prepared or read from,
  each with a class attribute as its default until then
  (:data:`LATE_ATTRIBUTES`, :data:`LATE_WEBSOCKET_ATTRIBUTES`; see
  :func:`preset`).

- ``StreamResponse._send_headers_immediately``, a class attribute (True;
  ``web.Response`` sets it False): a response whose class sets it False
  keeps its headers until its first write and sends both in one
  (:class:`server.web.aiohttp_sse_compat.EventStream`).
- The ``aiohttp.server`` logger gets an error with the exception for a
  request that does not parse (``HttpProcessingError``, 4xx) and for a
  body that cannot be read after the answer (``RequestPayloadError``)
  (:class:`MalformedRequests`).

Public, so not here: ``web.NotAppKeyWarning`` (which the tests ignore for
aiohttp-session's sake, see :mod:`server.store.aiohttp_session_compat`),
the logger names, ``AppRunner.server`` and ``web.Server.connections``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import types
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

# The releases these were checked on (tests/test_compat_aiohttp.py says when
# another is installed: check it, then add it).
CHECKED_ON = ("3.14.5",)

H = TypeVar("H", bound=web.RequestHandler)

# The attributes a response gets only as it is prepared (and a cookie is set,
# and a WebSocket's as it reads), each with its class's default until then.
LATE_ATTRIBUTES = (
    "_cookies",
    "_keep_alive",
    "_chunked",
    "_req",
    "_payload_writer",
    "_must_be_empty_body",
)
LATE_WEBSOCKET_ATTRIBUTES = (
    *LATE_ATTRIBUTES,
    "_loop",
    "_ws_protocol",
    "_writer",
    "_reader",
    "_parser",
    "_waiting",
)


def preset(response: web.StreamResponse, names: tuple[str, ...] = LATE_ATTRIBUTES) -> None:
    """Give a new response now the attributes it would get as it is prepared
    (their defaults, so nothing changes but when they are set).

    Attributes set on an instance after its constructor grow its ``__dict__``
    into a table of its own, about 700 bytes more for aiohttp-sse's response,
    held by every open stream; set in the same order right after the
    constructor, they are laid out with the others.
    """
    cls = type(response)
    for name in names:
        setattr(response, name, getattr(cls, name))


def _slot(name: str) -> Any:
    """The descriptor of aiohttp's slot ``name`` (of ``RequestHandler`` or a base)."""
    for klass in web.RequestHandler.__mro__:
        found = vars(klass).get(name)
        if found is not None:
            if not isinstance(found, types.MemberDescriptorType):
                raise TypeError(f"aiohttp's RequestHandler.{name} is no longer a slot")
            return found
    raise AttributeError(f"aiohttp's RequestHandler has no {name} any more")


class RequestHandlerBase(web.RequestHandler):
    """aiohttp's request handler, what a subclass reads of its internals
    under names of its own.

    The three attributes are aiohttp's own slot descriptors under another
    name: reading ``self.requests_parsed`` costs what reading
    ``self._request_count`` does, on the path every read of a connection
    takes.
    """

    __slots__ = ()

    # Requests whose headers were parsed on this connection.
    requests_parsed: int = _slot("_request_count")
    # The connection was switched to another protocol (a WebSocket): what
    # comes now are its frames, not a request's headers.
    upgraded: bool = _slot("_upgraded")
    # The loop that serves the connection.
    event_loop: asyncio.AbstractEventLoop = _slot("_loop")

    def newest_payload(self) -> StreamReader | None:
        """The body of the newest request parsed, if any is held."""
        messages = self._messages
        return messages[-1][1] if messages else None

    def awaiting_request(self) -> bool:
        """Whether the connection waits for its next request (it is answering none)."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()


def protocol_factory(
    handler: Callable[..., H],
    server: web.Server,
    *args: Any,
    loop: Any,
    keepalive_timeout: float,
    access_log: logging.Logger | None,
) -> Callable[[], H]:
    """What ``loop.create_server`` needs to serve ``server``'s app with
    ``handler(server, *args, ...)`` connections, built as ``web.Server`` builds
    its own."""
    return functools.partial(
        handler,
        server,
        *args,
        loop=loop,
        keepalive_timeout=keepalive_timeout,
        access_log=access_log,
    )


def protocol_of(request: web.BaseRequest) -> web.RequestHandler:
    """The handler of the connection ``request`` came on."""
    return request.protocol


# ``await drained(protocol)``: returns once the transport takes writes again
# (at once if it is not paused); ConnectionError once the connection is lost.
# (aiohttp's own method, unbound: no call of ours in between.)
drained: Callable[[web.RequestHandler], Awaitable[None]] = web.RequestHandler._drain_helper


async def send_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue``, as aiohttp's own expect handler does."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # (The interim answer is not part of the response's size.)
    request.writer.output_size = 0


def can_upgrade(ws: web.WebSocketResponse, request: web.BaseRequest) -> bool:
    """Whether ``request`` is a WebSocket handshake ``ws`` can take."""
    try:
        return ws.can_prepare(request).ok
    except UnicodeEncodeError:
        # A handshake header that is not UTF-8: aiohttp fails to word its 400.
        return False


class MalformedRequests(logging.Filter):
    """Keeps requests that are not HTTP, or bodies that are not what they
    say, out of the error log.

    aiohttp answers them 400 itself, and logs each as an error with a
    traceback ("Error handling request"): a client sending garbage would
    fill the log. They are logged on one line at debug level, and dropped
    otherwise. Install on the ``aiohttp.server`` logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # A body that could not be read (a bad chunk, gzip that is not) after
        # the answer went out, or a request that did not parse.
        client_error = isinstance(exc, web.RequestPayloadError) or (
            isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500
        )
        if not client_error:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = "malformed request: %s", (str(exc).splitlines()[0],)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True
