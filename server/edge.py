"""The edge: how long a connection may take over a request, and what it may hold meanwhile.

aiohttp closes idle keep-alive connections, but it has no deadline for a
request's headers or body, and it bounds each header line and their number
but not their total. A client that sends its headers a byte at a time, or a
body that never ends, keeps its connection (and what the parser holds of it)
for as long as it likes. Here:

- the headers of a connection's first request are due ``request_timeout_s``
  after it opened; on a keep-alive connection, the headers of the next
  request are due ``request_timeout_s`` after its first bytes came (until
  then the connection is idle, and ``keepalive_timeout_s``, aiohttp's own
  timer, applies). A connection whose headers are late is closed.
- a body is due ``request_timeout_s`` after its headers. One that is late
  fails the handler's read with :class:`~server.errors.RequestTimeout` (408
  with the JSON error), and the connection is closed after the answer.
- the headers of one request take at most :data:`HEAD_MAX_BYTES` in all.
- every accepted socket has a fixed kernel send buffer
  (:data:`SEND_BUFFER_BYTES`) instead of one the kernel grows to megabytes.

Streams are not timed: once an SSE or WebSocket request is in, its
connection is the stream's (the heartbeat and ``idle_timeout_s`` watch it).

The cost is nothing per request when a request's headers arrive in one read
(the common case) and its body with them or soon after: a connection is
timed only from a read that leaves headers unfinished (or from its start) or
a body incomplete, and one sweep per worker (:class:`Deadlines`) looks at
those connections only.

aiohttp lets no handler class be given to its ``web.Server``; :class:`Edge`
serves the runner's server with a protocol factory of its own, making
:class:`EdgeHandler`, a ``web.RequestHandler`` with the same arguments. It
reads these aiohttp 3.14 internals of ``RequestHandler`` (``tests/
test_edge.py`` fails if any of them changes): ``_request_count`` (grows by
one per request whose headers were parsed), ``_messages`` (the parsed
requests with their payloads, newest last), ``_upgraded`` (the connection
was switched to another protocol, e.g. WebSocket), ``_waiter`` (set while
the connection waits for its next request) and ``_loop``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from typing import Any

from aiohttp import StreamReader, web

from .config import Config
from .errors import RequestTimeout

log = logging.getLogger(__name__)

# The most a request's headers may take, request line included. Browsers
# send 1-2 KiB, and cookies of other sites on a shared domain rarely reach
# 16 KiB; nginx allows 32 KiB by default, Node.js 16 KiB. aiohttp's own
# limits (8190 bytes a line, 128 headers) still let one connection pin a
# megabyte, more than twice that once parsed.
HEAD_MAX_BYTES = 64 * 1024

# The kernel send buffer of every accepted socket (Linux doubles it, for its
# bookkeeping: 128 KiB). Left alone, the kernel grows a connection's buffer
# to tcp_wmem's maximum (4 MiB) when it sends fast, as fan-out and replays
# do, and a client that then stops reading pins all of it until it is cut
# off. 64 KiB keeps a connection busy at 1 MB/s over 60 ms of round trip, far
# above what a chat stream needs (a replay page is 100 messages), and beyond
# it the transport's own buffer (256 KiB, see server.transports.sink) waits
# in the process, where the hub sees it and cuts slow consumers off.
SEND_BUFFER_BYTES = 64 * 1024

_HEAD_TOO_LARGE_BODY = (
    b'{"error":{"code":"headers_too_large","message":"request headers over '
    + str(HEAD_MAX_BYTES).encode()
    + b' bytes"}}'
)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_HEAD_TOO_LARGE_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _HEAD_TOO_LARGE_BODY
)


class EdgeHandler(web.RequestHandler):
    """aiohttp's request handler, with deadlines for headers and bodies and a bound on headers."""

    __slots__ = ("_body", "_body_since", "_deadlines", "_head_bytes", "_head_since")

    def __init__(self, manager: web.Server, deadlines: Deadlines, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        # When the headers now due began (loop time); 0.0 when none are due.
        self._head_since = 0.0
        self._head_bytes = 0
        # The payload of the newest request while its body is incomplete.
        self._body: StreamReader | None = None
        self._body_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # A new connection owes its first request's headers from now, sent or not.
        self._head_since = self._loop.time()
        self._deadlines.watch(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadlines.forget(self)
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgraded or not data:
            # A WebSocket's frames (or aiohttp re-reading what it buffered).
            super().data_received(data)
            return
        parsed = self._request_count
        body = self._body
        heading = body is None or body.is_eof()  # else these bytes are the body's
        super().data_received(data)
        if self._request_count != parsed:
            # A request's headers are in. (Should this read also begin the
            # next one's, its next read starts their clock.)
            self._head_since = 0.0
            self._head_bytes = 0
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._body_since = self._loop.time()
                self._deadlines.watch(self)
            else:
                self._body = None
        elif heading and self.transport is not None:
            # Headers begun and not finished by this read.
            self._head_bytes += len(data)
            if not self._head_since:
                self._head_since = self._loop.time()
                self._deadlines.watch(self)
            if self._head_bytes > HEAD_MAX_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        log.debug("closing a connection from %s: headers too large", self.peername)
        transport = self.transport
        if transport is not None and self._waiter is not None and not self._waiter.done():
            # Nothing else is being answered on this connection: say why. (A
            # client still sending may get a reset before it reads this.)
            transport.write(HEAD_TOO_LARGE)
        self.force_close()

    def overdue(self, late: float) -> bool:
        """Act on a deadline that passed before ``late``; False once nothing is due."""
        if self.transport is None:
            return False
        if self._head_since:
            if self._head_since > late:
                return True
            log.debug("closing a connection from %s: headers not in on time", self.peername)
            self.force_close()
            return False
        body = self._body
        if body is not None and (body.is_eof() or self._body_since <= late):
            if not body.is_eof():
                log.debug("failing a request from %s: its body is late", self.peername)
                # Whoever reads the body gets the error (and answers 408); if
                # nobody does, aiohttp's read of the rest after the answer
                # gets it, and closes the connection.
                body.set_exception(RequestTimeout("the request body did not arrive in time"))
            self._body = body = None
        return body is not None


class Deadlines:
    """One timer per worker that acts on the connections whose request is late."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # A deadline is acted on at most this late.
        self.interval_s = min(1.0, timeout_s / 4)
        self._due: set[EdgeHandler] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, handler: EdgeHandler) -> None:
        self._due.add(handler)

    def forget(self, handler: EdgeHandler) -> None:
        self._due.discard(handler)

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval_s, self._sweep)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            late = loop.time() - self.timeout_s
            for handler in list(self._due):
                if not handler.overdue(late):
                    self._due.discard(handler)
        finally:
            self._handle = loop.call_later(self.interval_s, self._sweep)


class Edge:
    """Serves a runner's app on a listening socket with :class:`EdgeHandler` connections.

    In place of ``web.SockSite`` (whose connections are aiohttp's plain
    handlers); the runner's ``cleanup()`` still shuts those connections down,
    as they register with its ``web.Server`` like any handler.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        config: Config,
        *,
        access_log: logging.Logger | None = None,
    ) -> None:
        self.runner = runner
        self.sock = sock
        self.backlog = config.backlog
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.access_log = access_log
        self.deadlines = Deadlines(config.request_timeout_s)
        self._listener: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        server = self.runner.server
        assert server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()
        # Accepted sockets take the listening socket's buffer size, and with
        # it the kernel's promise not to grow it.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        factory = functools.partial(
            EdgeHandler,
            server,
            self.deadlines,
            loop=loop,
            keepalive_timeout=self.keepalive_timeout_s,
            access_log=self.access_log,
        )
        self.deadlines.start()
        # listen() again: with the configured backlog (asyncio's default is 100).
        self._listener = await loop.create_server(factory, sock=self.sock, backlog=self.backlog)

    async def stop(self) -> None:
        """Stop accepting (connections already open are the runner's to shut down)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.deadlines.stop()
