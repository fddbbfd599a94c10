"""``GET /api/rooms/{room}/ws``: the WebSocket transport.

The handler reads the client's frames (messages to post, pings, pongs);
the hub writes events straight to the connection (see
:mod:`server.web.transports.sink`), so no task is woken per message. The
connection ends when the client closes it or the server does. Close codes:
1001 on shutdown or when idle, 1012 on a reload, 1013 when Redis failed,
1003 for binary and 1009 for oversize frames; a client that is not reading
what it was sent is reset instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from ...common.metrics import Metrics
from ...core.close_reason import CloseReason
from ...core.errors import (
    BadRequest,
    ChatError,
    InvalidToken,
    Unavailable,
    error_payload,
    storage_full,
)
from ...core.identity import Role
from ...core.subscription import Subscription
from ...core.wire import to_json
from ...store.failures import UNREACHABLE, is_out_of_memory
from .. import message_input
from ..addresses import owner_of
from ..aiohttp_compat import LATE_WEBSOCKET_ATTRIBUTES, can_upgrade, preset
from ..middlewares import ThrottledErrorLog
from ..posting import Posting
from ..sessions import Sessions, User
from ..signin import check_may_post, expires_at
from ..typing_notices import Typing
from . import connection
from .connection import Connections
from .sink import DirectSink, forget_handshake

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's answer

CLOSE_CODES = {
    CloseReason.SHUTDOWN: WSCloseCode.GOING_AWAY,
    CloseReason.IDLE: WSCloseCode.GOING_AWAY,
    CloseReason.RELOAD: WSCloseCode.SERVICE_RESTART,
    CloseReason.UNAVAILABLE: WSCloseCode.TRY_AGAIN_LATER,
    CloseReason.AUTH_EXPIRED: 4401,
    CloseReason.SIGNED_OUT: 4001,
    CloseReason.DISCONNECTED: 4000,  # ended by the application: it may reconnect
    CloseReason.REMOVED: 4403,  # ended, and it may not come back
    CloseReason.BANNED: 4403,
}


class WsSink(DirectSink):
    __slots__ = ("_closing", "_ws")

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        super().__init__(request, "ws_wire")
        self._ws = ws
        self._closing: asyncio.Task[bool] | None = None

    def close(self, reason: CloseReason) -> None:
        """Start the closing handshake; the handler's receive loop ends with it.

        A client that is not reading gets a reset instead: it would not see
        the close frame, and after the handshake timed out aiohttp's plain
        close would leave the kernel holding what it did not read.
        """
        if self._closing is None and not self._ws.closed:
            if self.behind():
                self.abort()
                return
            code = CLOSE_CODES.get(reason, WSCloseCode.GOING_AWAY)
            message = (
                b"Redis is unavailable" if reason == CloseReason.UNAVAILABLE else reason.encode()
            )
            self._closing = asyncio.get_running_loop().create_task(
                self._ws.close(code=code, message=message)
            )

    async def finish(self) -> None:
        if self._closing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._closing


class WsHandler:
    """``GET /api/rooms/{room}/ws``, with what it takes."""

    __slots__ = (
        "connections",
        "max_msg_size",
        "metrics",
        "posting",
        "redis_errors",
        "sessions",
        "typing",
    )

    def __init__(
        self,
        sessions: Sessions,
        connections: Connections,
        posting: Posting,
        typing: Typing,
        redis_errors: ThrottledErrorLog,
        metrics: Metrics,
        *,
        max_msg_size: int,
    ) -> None:
        self.sessions = sessions
        self.connections = connections
        self.posting = posting
        self.typing = typing
        self.redis_errors = redis_errors
        self.metrics = metrics
        self.max_msg_size = max_msg_size  # of a client's frame, in bytes

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        room = message_input.room_name(request.match_info["room"])
        since = connection.resume_id(request.query.get("since"), "since")
        ws = web.WebSocketResponse(
            autoping=False,  # pongs are read here: they prove the client is alive
            compress=False,  # per-connection zlib state costs far more than it saves here
            max_msg_size=self.max_msg_size,
            timeout=CLOSE_TIMEOUT_S,
        )
        preset(ws, LATE_WEBSOCKET_ATTRIBUTES)
        if not can_upgrade(ws, request):
            raise BadRequest("expected a WebSocket upgrade request")
        user = await self.sessions.current_user(request, charge=False)
        role = await self.sessions.role_in(user, room)  # (decided once, for the connection)
        async with self.connections.opened(request, ws, room, user, since, "ws") as sub:
            await ws.prepare(request)
            forget_handshake(request, ws)
            sink = WsSink(request, ws)
            sub.last_seen = time.monotonic()
            sub.attach(sink)
            address = owner_of(request.remote)
            # The frames are read here rather than in a method of their own:
            # one coroutine frame less held by every open connection.
            try:
                while True:
                    msg = await ws.receive()
                    sub.last_seen = received = time.monotonic()
                    if msg.type == WSMsgType.TEXT:
                        answer = await self._handle_text(
                            msg.data, sub, user, role, address, received
                        )
                        if answer is not None:  # (a typing notice sent has none)
                            await ws.send_str(answer)
                    elif msg.type == WSMsgType.PING:
                        await ws.pong(msg.data)
                    elif msg.type == WSMsgType.PONG:
                        pass
                    elif msg.type == WSMsgType.BINARY:
                        await ws.close(
                            code=WSCloseCode.UNSUPPORTED_DATA,
                            message=b"binary frames are not supported",
                        )
                        break
                    else:  # CLOSE, CLOSING, CLOSED, or ERROR (closed by aiohttp, 1009 if oversize)
                        break
            except (ConnectionResetError, RuntimeError):
                pass  # the client went away
            finally:
                await sub.stop()
                await sink.finish()
        return ws

    async def _handle_text(
        self, text: str, sub: Subscription, user: User, role: Role, address: str, arrived: float
    ) -> str | None:
        """Answer one client frame (received at ``arrived``, monotonic) with an
        ack or an error frame (None: a typing notice, answered only when
        refused); never raises a ChatError."""
        ref: Any = None
        try:
            data = message_input.json_object(text, "frame")
            ref = data.get("ref")
            if not (
                ref is None or (isinstance(ref, (str, int, float)) and not isinstance(ref, bool))
            ):
                ref = None
                raise BadRequest("'ref' must be a string or a number")
            if isinstance(ref, float) and not math.isfinite(ref):
                ref = None
                raise BadRequest("'ref' must be a finite number")
            if isinstance(ref, str) and len(ref) > 128:
                ref = None
                raise BadRequest("'ref' is longer than 128 characters")
            kind = data.get("type")
            if kind == "auth":
                return await self._refresh(data.get("token"), ref, sub, user)
            if kind not in ("message", "typing"):
                raise BadRequest(
                    f"unknown frame type {kind!r}; expected 'message', 'typing' or 'auth'"
                )
            check_may_post(role, user.identity)
            # The name is read with the budgets, so that a rename made elsewhere
            # applies from the next message (or typing notice).
            writer = User(user.user_id, user.token_name, is_new=False, identity=user.identity)
            if kind == "typing":
                await self.typing.notify(sub.room.name, writer, address)
                return None
            key = message_input.idempotency_key(data.get("key"), "'key'")
            message, _ = await self.posting.post(
                sub.room.name,
                writer,
                data.get("text"),
                address=address,
                idempotency_key=key,
                arrived=arrived,
            )
        except ChatError as exc:
            error = error_payload(exc)
            if exc.retry_after:
                error["retry_after"] = str(exc.retry_after)
            return _frame("error", ref, error=error)
        except UNREACHABLE as exc:
            self.redis_errors.record(exc)
            return _frame(
                "error", ref, error=error_payload(Unavailable("Redis is unavailable; retry"))
            )
        except RedisError as exc:
            # Redis refused the write (out of memory, a read-only replica): the
            # message was not stored; the connection itself is fine.
            if is_out_of_memory(exc):
                full = storage_full()
                self.redis_errors.record(exc, full.status)
                error = error_payload(full)
            else:
                log.warning("Redis refused a message: %s", exc)
                self.metrics.redis_error()
                error = error_payload(Unavailable("Redis refused the message; retry shortly"))
            return _frame("error", ref, error=error)
        return f'{{"type":"ack","ref":{json.dumps(ref)},"message":{message.json}}}'

    async def _refresh(self, token: Any, ref: Any, sub: Subscription, user: User) -> str:
        """``{"type": "auth", "token"}``: a newer token for the stream's user
        moves the end of its sign-in; ``{"type": "auth", "expires_at"}``."""
        verifier = self.sessions.sign_in.verifier
        if verifier is None or sub.expiry is None:
            raise BadRequest("this stream is not signed in: there is nothing to refresh")
        identity = await verifier.verify(token)
        if identity.user_id != user.user_id:
            raise InvalidToken("the token is for another user than the stream's")
        sub.expiry.extend(identity.expires_at)
        return _frame("auth", ref, expires_at=expires_at(identity))


def _frame(kind: str, ref: Any, **fields: Any) -> str:
    return to_json({"type": kind, "ref": ref, **fields})
