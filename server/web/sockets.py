"""What a connection's socket holds unsent, and the reset that frees it;
how many connections wait to be accepted.

Shared by the edge (plain responses), the streaming transports and a
worker on its way out (:class:`AcceptQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct

log = logging.getLogger(__name__)

# The kernel send buffer of every accepted socket (Linux doubles it, for its
# bookkeeping: 128 KiB). Left alone, the kernel grows a connection's buffer
# to tcp_wmem's maximum (4 MiB) when it sends fast, as fan-out and replays
# do, and a client that then stops reading pins all of it until it is cut
# off. 64 KiB keeps a connection busy at 1 MB/s over 60 ms of round trip, far
# above what a chat connection needs (a replay page is 100 messages), and beyond
# it the transport's own buffer waits in the process, where the edge (plain
# responses) or the hub (SSE and WebSocket) sees a client that does not read.
SEND_BUFFER_BYTES = 64 * 1024

_LINGER_ABORT = struct.pack("ii", 1, 0)
# Linux's ioctl for the bytes a socket has not sent yet (sockios.h).
_SIOCOUTQNSD = 0x894B


def unsent_in_kernel(transport: asyncio.BaseTransport) -> int:
    """Bytes written to the socket that the kernel has not sent yet (0 when unknown)."""
    sock = transport.get_extra_info("socket")
    try:
        unsent = fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return 0  # not Linux, or not a socket of its own any more
    return int(struct.unpack("i", unsent)[0])


def reset(transport: asyncio.Transport) -> None:
    """Reset the connection, freeing what the kernel still holds for it.

    A plain close keeps unsent data queued (FIN-WAIT-1) for minutes, and a
    client that resumes reading later would get all of it.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        # uvloop's stand-in socket may refuse it: then a plain abort.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    transport.abort()


class Stall:
    """Times what waits unsent in a transport (what the kernel did not take):
    a client that takes none of it for a while has its connection reset."""

    __slots__ = ("_since", "_transport", "_unsent")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        # Since when what waits has not shrunk (loop time); 0.0: nothing waits.
        self._since = 0.0
        self._unsent = 0

    def began(self, now: float) -> None:
        """Something waits (the transport paused its writers)."""
        self._since = now
        self._unsent = self._transport.get_write_buffer_size()

    def ended(self) -> None:
        """Nothing waits any more (the writers resumed), or it is not for this to time."""
        self._since = 0.0

    def overdue(self, now: float, timeout_s: float) -> bool:
        """Reset the connection if none of what waits went in the ``timeout_s``
        before ``now``; True while something waits and may yet be due."""
        if not self._since:
            return False
        unsent = self._transport.get_write_buffer_size()
        if unsent < self._unsent:
            self._since = now  # the client took some: progress
        self._unsent = unsent
        if self._since > now - timeout_s:
            return True
        peer = self._transport.get_extra_info("peername")
        log.debug("resetting a connection from %s: no progress in %g s", peer, timeout_s)
        self._since = 0.0
        reset(self._transport)
        return False


# Linux's struct tcp_info: for a listening socket, ``tcpi_unacked`` is the
# number of connections waiting to be accepted, ``tcpi_sacked`` the most that may.
_TCP_INFO_BYTES = 104
_TCP_INFO_QUEUE = 24  # offset of tcpi_unacked (then tcpi_sacked)


class AcceptQueue:
    """The connections waiting in a listening socket's queue (one queue for
    every process that shares the socket), read through a descriptor of its
    own: it still answers once this process stopped accepting on it."""

    # Crowded from a quarter of the queue's room (and at least this many):
    # well before the kernel drops new connections, whose clients would try
    # again only a second or more later.
    CROWDED_AT_LEAST = 64

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock.dup()

    def waiting(self) -> tuple[int, int]:
        """Connections waiting, and the most that may (0, 0 when unknown)."""
        try:
            info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
        except OSError:
            return 0, 0
        waiting, room = struct.unpack_from("II", info, _TCP_INFO_QUEUE)
        return waiting, room

    def crowded(self) -> bool:
        waiting, room = self.waiting()
        return waiting >= max(self.CROWDED_AT_LEAST, room // 4)

    def close(self) -> None:
        self._sock.close()
