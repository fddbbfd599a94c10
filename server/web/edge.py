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
  fails the handler's read with :class:`~server.core.errors.RequestTimeout` (408
  with the JSON error), and the connection is closed after the answer.
- the headers of one request take at most :data:`HEAD_MAX_BYTES` in all.
- every accepted socket has a fixed kernel send buffer
  (:data:`~server.web.sockets.SEND_BUFFER_BYTES`) instead of one the kernel
  grows to megabytes.
- what the kernel does not take of an answer waits in the transport, and
  its handler waits for it to go (aiohttp's writers wait while the
  transport has paused writing, here as soon as anything waits): an answer
  that makes no progress for ``idle_timeout_s`` (nothing more of it taken
  by the client) is reset, freeing what it held, here and in the kernel.
- an address (a peer that is not a trusted proxy) has at most
  ``address_connections`` open in a worker; one more is answered 429.

SSE and WebSocket connections are not timed here: once such a request is
in, the connection is the transport's (the heartbeat and ``idle_timeout_s`` watch it,
and the hub what it sends: see :meth:`EdgeHandler.streaming`).

The cost is nothing per request when a request's headers arrive in one read
(the common case), its body with them or soon after, and the client takes
its answer: a connection is timed only from a read that leaves headers
unfinished (or from its start), a body incomplete, or a write the kernel
could not take whole, and one sweep per worker
(:class:`~server.web.deadlines.Deadlines`) looks at those connections only.

aiohttp lets no handler class be given to its ``web.Server``; :class:`Edge`
serves the runner's server with a protocol factory of its own, making
:class:`EdgeHandler`, a ``web.RequestHandler`` with the same arguments. What
it reads of aiohttp's handler beyond its documented API (the requests
parsed, the newest payload, whether the connection was upgraded or waits
for a request) goes through :mod:`server.web.aiohttp_compat`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from aiohttp import StreamReader, web

from ..common.config import Config
from ..core.errors import RequestTimeout
from .addresses import OpenConnections, Proxies
from .aiohttp_compat import RequestHandlerBase, protocol_factory
from .deadlines import Deadlines
from .responses import raw_error
from .sockets import SEND_BUFFER_BYTES, Stall

log = logging.getLogger(__name__)

# The most a request's headers may take, request line included. Browsers
# send 1-2 KiB, and cookies of other sites on a shared domain rarely reach
# 16 KiB; nginx allows 32 KiB by default, Node.js 16 KiB. aiohttp's own
# limits (8190 bytes a line, 128 headers) still let one connection pin a
# megabyte, more than twice that once parsed.
HEAD_MAX_BYTES = 64 * 1024

HEAD_TOO_LARGE = raw_error(431, f"request headers over {HEAD_MAX_BYTES} bytes", "headers_too_large")
# When a client refused for its number of connections may try again: once
# one of them has closed, there is no telling when; so a few seconds.
CONNECTIONS_RETRY_AFTER_S = 5


class EdgeHandler(RequestHandlerBase):
    """aiohttp's request handler, with the deadlines, bounds and counts above."""

    __slots__ = (
        "_address",
        "_body",
        "_body_since",
        "_deadlines",
        "_edge",
        "_head_bytes",
        "_head_since",
        "_stall",
        "_streaming",
    )

    def __init__(self, manager: web.Server, edge: Edge, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = edge
        self._deadlines = edge.deadlines
        # What the connection counts under in edge.connections (None: not counted).
        self._address: str | None = None
        # When the headers now due began (loop time); 0.0 when none are due.
        self._head_since = 0.0
        self._head_bytes = 0
        # The payload of the newest request while its body is incomplete.
        self._body: StreamReader | None = None
        self._body_since = 0.0
        # What waits unsent, timed until the connection is lost (aiohttp
        # lets go of its transport when it closes it, perhaps before that).
        # None until the connection is accepted, and when it is refused.
        self._stall: Stall | None = None
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sending = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        address = self._edge.connections.key(peer[0] if isinstance(peer, tuple) else None)
        if address is not None and not self._edge.connections.add(address):
            self._edge.refuse(sending, address)  # (no request of it is ever handled)
            return
        self._address = address
        super().connection_made(transport)
        self._stall = Stall(sending)
        # Writers wait (pause_writing) as soon as the kernel does not take
        # everything, rather than leave up to 64 KiB more waiting here.
        sending.set_write_buffer_limits(high=0)
        # A new connection owes its first request's headers from now, sent or not.
        self._head_since = self.event_loop.time()
        self._deadlines.watch(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._stall is None:
            return  # refused: aiohttp never had it
        if self._address is not None:
            self._edge.connections.remove(self._address)
            self._address = None
        self._deadlines.forget(self)
        self._body = None
        self._stall = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._streaming and self._stall is not None:
            self._stall.began(self.event_loop.time())
            self._deadlines.watch(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.ended()  # everything waiting went

    def streaming(self) -> None:
        """The connection carries SSE or WebSocket from now on: what
        it sends is the hub's to time (it cuts off slow consumers), not the edge's."""
        self._streaming = True
        if self._stall is not None:
            self._stall.ended()

    def data_received(self, data: bytes) -> None:
        if self.upgraded or not data:
            # A WebSocket's frames (or aiohttp re-reading what it buffered).
            super().data_received(data)
            return
        parsed = self.requests_parsed
        body = self._body
        heading = body is None or body.is_eof()  # else these bytes are the body's
        super().data_received(data)
        if self.requests_parsed != parsed:
            # A request's headers are in. (Should this read also begin the
            # next one's, its next read starts their clock.)
            self._head_since = 0.0
            self._head_bytes = 0
            payload = self.newest_payload()
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._body_since = self.event_loop.time()
                self._deadlines.watch(self)
            else:
                self._body = None
        elif heading and self.transport is not None:
            # Headers begun and not finished by this read.
            self._head_bytes += len(data)
            if not self._head_since:
                self._head_since = self.event_loop.time()
                self._deadlines.watch(self)
            if self._head_bytes > HEAD_MAX_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        log.debug("closing a connection from %s: headers too large", self.peername)
        transport = self.transport
        if transport is not None and self.awaiting_request():
            # Nothing else is being answered on this connection: say why. (A
            # client still sending may get a reset before it reads this.)
            transport.write(HEAD_TOO_LARGE)
        self.force_close()

    def overdue(self, now: float) -> bool:
        """Act on the deadlines that passed by ``now``; False once nothing is due."""
        stall = self._stall
        sending = stall is not None and stall.overdue(now, self._deadlines.send_timeout_s)
        if self.transport is None:
            return sending  # closed by aiohttp: only what it still sends is timed
        return self._read_overdue(now - self._deadlines.timeout_s) or sending

    def _read_overdue(self, late: float) -> bool:
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
        refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.runner = runner
        self.sock = sock
        self.backlog = config.backlog
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.access_log = access_log
        self.deadlines = Deadlines(config.request_timeout_s, config.idle_timeout_s)
        self.connections = OpenConnections(
            config.address_connections, Proxies(config.trusted_proxies)
        )
        self._refused = refused
        self._too_many = raw_error(
            429,
            f"at most {config.address_connections} open connections per client address",
            "too_many_connections",
            retry_after_s=CONNECTIONS_RETRY_AFTER_S,
        )
        self._listener: asyncio.AbstractServer | None = None

    def refuse(self, transport: asyncio.Transport, address: str) -> None:
        """Answer a connection over its address's count 429, and close it."""
        log.debug("refusing a connection from %s: %d open already", address, self.connections.limit)
        transport.write(self._too_many)
        transport.close()
        self._refused()

    async def start(self) -> None:
        server = self.runner.server
        assert server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()
        # Accepted sockets take the listening socket's buffer size, and with
        # it the kernel's promise not to grow it.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        factory = protocol_factory(
            EdgeHandler,
            server,
            self,
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
