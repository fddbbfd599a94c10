"""Writing pre-encoded events straight to a connection's transport.

Both transports are written the same way once their response is prepared:
the bytes of an event, encoded once per worker, go to ``transport.write``
unless the transport has paused writing (its buffer is over the high-water
mark because the client reads slowly); then the hub queues the event and
waits for :meth:`drain`. aiohttp's handler of the connection keeps that
state (``writing_paused``, and :data:`~server.web.aiohttp_compat.drained`,
what its own writers await).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import aiohttp_session
from aiohttp import web

from ...core.model import Event
from ..aiohttp_compat import drained, protocol_of
from ..edge import EdgeHandler
from ..sockets import reset, unsent_in_kernel

# A transport pauses writing above this many unsent bytes; then the hub
# queues events for the connection instead of writing them. The default
# (64 KiB) sends a client that merely lags for a moment down the slower
# queued path; this still bounds what one connection holds in the process.
HIGH_WATER = 256 * 1024


def forget_handshake(request: web.Request, response: web.StreamResponse) -> None:
    """Let go of what a stream needed only until its response was prepared.

    The response's headers and cookies went out with its head, and the
    session was read (and saved, when new); yet the request and the
    response live as long as the stream: with a new visitor's session
    cookie, about 1.8 KB a connection held for nothing.
    """
    response.headers.clear()
    response.cookies.clear()
    request.pop(aiohttp_session.SESSION_KEY, None)


class DirectSink:
    """The parts of :class:`~server.core.subscription.Sink` that SSE and WebSocket share.

    ``wire`` picks an event's bytes for this connection (an attribute of the
    event, already encoded once per worker).
    """

    __slots__ = ("_protocol", "_transport", "_wire")

    def __init__(self, request: web.Request, wire: str) -> None:
        assert request.transport is not None
        self._transport = request.transport
        self._protocol = protocol_of(request)
        self._transport.set_write_buffer_limits(high=HIGH_WATER)
        if isinstance(self._protocol, EdgeHandler):
            self._protocol.streaming()  # the hub times what it sends from now on
        self._wire: Callable[[Event], bytes] = operator.attrgetter(wire)

    def send(self, event: Event) -> bool:
        transport = self._transport
        if transport.is_closing():
            return True  # the handler is about to learn the client left
        if self._protocol.writing_paused:
            return False
        transport.write(self._wire(event))
        return True

    async def drain(self) -> None:
        await drained(self._protocol)

    def behind(self) -> bool:
        """Whether some of what was written is not sent yet, in the process or the kernel.

        Then the client is not reading (or not keeping up): a goodbye would
        wait behind the rest, and a plain close would leave the kernel
        holding it, for as long as the client likes.
        """
        transport = self._transport
        return bool(transport.get_write_buffer_size() or unsent_in_kernel(transport))

    def abort(self) -> None:
        """Reset the connection, freeing what the kernel still holds for it
        (see :func:`server.web.sockets.reset`)."""
        reset(self._transport)
