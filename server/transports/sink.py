"""Writing pre-encoded events straight to a connection's transport.

Both transports are written the same way once their response is prepared:
the bytes of an event, encoded once per worker, go to ``transport.write``
unless the transport has paused writing (its buffer is over the high-water
mark because the client reads slowly); then the hub queues the event and
waits for :meth:`drain`. aiohttp 3.14's protocol keeps that state in
``writing_paused`` and ``_drain_helper()`` (what its own writers await).
"""

from __future__ import annotations

import contextlib
import fcntl
import operator
import socket
import struct
from collections.abc import Callable

from aiohttp import web

from ..model import Event

_LINGER_ABORT = struct.pack("ii", 1, 0)
# Linux's ioctl for the bytes a socket has not sent yet (sockios.h).
_SIOCOUTQNSD = 0x894B
# A transport pauses writing above this many unsent bytes; then the hub
# queues events for the connection instead of writing them. The default
# (64 KiB) sends a client that merely lags for a moment down the slower
# queued path; this still bounds what one connection holds in the process.
HIGH_WATER = 256 * 1024


class DirectSink:
    """The parts of :class:`~server.subscription.Sink` that SSE and WebSocket share.

    ``wire`` picks an event's bytes for this connection (an attribute of the
    event, already encoded once per worker).
    """

    __slots__ = ("_protocol", "_transport", "_wire")

    def __init__(self, request: web.Request, wire: str) -> None:
        assert request.transport is not None
        self._transport = request.transport
        self._protocol = request.protocol
        self._transport.set_write_buffer_limits(high=HIGH_WATER)
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
        await self._protocol._drain_helper()

    def behind(self) -> bool:
        """Whether some of what was written is not sent yet, in the process or the kernel.

        Then the client is not reading (or not keeping up): a goodbye would
        wait behind the rest, and a plain close would leave the kernel
        holding it, for as long as the client likes.
        """
        transport = self._transport
        if transport.get_write_buffer_size():
            return True
        sock = transport.get_extra_info("socket")
        try:
            unsent = fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0")
        except (OSError, AttributeError, ValueError):
            return False  # not Linux, or not a socket of its own any more
        return int(struct.unpack("i", unsent)[0]) > 0

    def abort(self) -> None:
        """Reset the connection, freeing what the kernel still holds for it.

        A plain close keeps unsent data queued (FIN-WAIT-1) for minutes, and
        a client that resumes reading later would get all of it.
        """
        transport = self._transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # uvloop's stand-in socket may refuse it: then a plain abort.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        transport.abort()
