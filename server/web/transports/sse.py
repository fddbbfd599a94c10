"""``GET /api/rooms/{room}/events``: Server-Sent Events with aiohttp-sse.

Once the response is prepared, the hub writes every event straight to the
connection (see :mod:`server.web.transports.sink`); the handler only waits for
the subscription to end. The response is aiohttp-sse's without its ping task
(:class:`~server.web.aiohttp_sse_compat.EventStream`): the heartbeat pings.
"""

from __future__ import annotations

import random

from aiohttp import web

from ...core.close_reason import MODERATION, CloseReason
from ...core.wire import sse_chunk
from .. import message_input
from ..aiohttp_compat import preset
from ..aiohttp_sse_compat import EventStream
from ..sessions import Sessions
from . import connection
from .connection import Connections
from .sink import DirectSink, forget_handshake

RETRY_MS = 1000
REDIS_RETRY_MS = 2000
# On a reload, when to come back: a random time within these (ms), so that
# the clients of one batch of closed streams do not all reconnect at once.
RELOAD_RETRY_MS = (100, 600)


def _reconnect(reason: CloseReason, retry_ms: int) -> bytes:
    """The last event of a stream the server ends: why, and when to come back."""
    return f"event: reconnect\ndata: {reason}\nretry: {retry_ms}\n\n".encode()


class SseSink(DirectSink):
    __slots__ = ("_chunked",)

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        # An HTTP/1.0 client gets no chunked encoding: then the frames go as they are.
        self._chunked = response.chunked
        super().__init__(request, "sse_chunk" if self._chunked else "sse_frame")

    def close(self, reason: CloseReason) -> None:
        if self._transport.is_closing():
            return
        if self.behind():
            # Not reading: the reconnect hint would never arrive (see WsSink.close).
            self.abort()
            return
        if reason in (CloseReason.AUTH_EXPIRED, CloseReason.SIGNED_OUT):
            frame = f"event: {reason}\ndata: {{}}\n\n".encode()
            self._transport.write(sse_chunk(frame) if self._chunked else frame)
        elif reason in MODERATION:
            again = "true" if reason == CloseReason.DISCONNECTED else "false"
            data = f'{{"reason": "{reason}", "reconnect": {again}}}'
            frame = f"event: disconnected\ndata: {data}\n\n".encode()
            self._transport.write(sse_chunk(frame) if self._chunked else frame)
        elif reason in (CloseReason.SHUTDOWN, CloseReason.RELOAD, CloseReason.UNAVAILABLE):
            if reason == CloseReason.RELOAD:
                retry = random.randint(*RELOAD_RETRY_MS)
            else:
                retry = REDIS_RETRY_MS if reason == CloseReason.UNAVAILABLE else RETRY_MS
            frame = _reconnect(reason, retry)
            self._transport.write(sse_chunk(frame) if self._chunked else frame)


class SseHandler:
    """``GET /api/rooms/{room}/events``, with what it takes."""

    __slots__ = ("connections", "send_timeout_s", "sessions")

    def __init__(
        self, sessions: Sessions, connections: Connections, *, send_timeout_s: float
    ) -> None:
        self.sessions = sessions
        self.connections = connections
        self.send_timeout_s = send_timeout_s  # (what a write may wait for the client)

    async def events(self, request: web.Request) -> web.StreamResponse:
        room = message_input.room_name(request.match_info["room"])
        header = request.headers.get("Last-Event-ID")
        since = connection.resume_id(
            header if header is not None else request.query.get("last_event_id"), "Last-Event-ID"
        )
        user = await self.sessions.current_user(request, charge=False)
        await self.sessions.role_in(user, room)  # (a private room it has no grant for: 404)
        response = EventStream(send_timeout=self.send_timeout_s)
        preset(response)
        async with self.connections.opened(request, response, room, user, since, "sse") as sub:
            try:
                await response.prepare(request)
            except ConnectionResetError:
                return response  # the client went away while its stream was admitted
            forget_handshake(request, response)
            async with response:
                try:
                    await response.write(f"retry: {RETRY_MS}\n\n".encode())
                except (ConnectionResetError, RuntimeError):
                    return response  # the client went away
                response.end_with(sub.done)
                sub.attach(SseSink(request, response))
                try:
                    await sub.done
                finally:
                    await sub.stop()
                if sub.close_reason in (CloseReason.RELOAD, CloseReason.SHUTDOWN):
                    # The connection goes too: the client's next request (its
                    # reconnect) must not reach this worker on it again.
                    response.force_close()
            return response
