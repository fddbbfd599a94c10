"""``GET /api/rooms/{room}/ws``: the WebSocket transport.

One task reads the client's frames (messages to post, pings, pongs); another
drains the subscription. The connection ends when either does; the other
is then cancelled and awaited. Close codes: 1001 on shutdown or when idle,
1012 on a reload, 1013 when Redis failed, 1003 for binary and 1009 for
oversize frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import keys, posting, sessions, streams
from ..errors import BadRequest, ChatError, Unavailable, error_payload
from ..hub import Overflow, Presence, Subscription
from ..sessions import User

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0  # how long a close waits for the client's answer

CLOSE_CODES = {
    streams.SHUTDOWN: WSCloseCode.GOING_AWAY,
    streams.RELOAD: WSCloseCode.SERVICE_RESTART,
}


async def websocket(request: web.Request) -> web.StreamResponse:
    room = posting.room_name(request.match_info["room"])
    since = streams.resume_id(request.query.get("since"), "since")
    config = request.app[keys.CONFIG]
    ws = web.WebSocketResponse(
        autoping=False,  # pongs are read here: they prove the client is alive
        compress=False,  # per-connection zlib state costs far more than it saves here
        max_msg_size=config.body_max_bytes,
        timeout=CLOSE_TIMEOUT_S,
    )
    if not ws.can_prepare(request).ok:
        raise BadRequest("expected a WebSocket upgrade request")
    user = await sessions.current_user(request)
    async with streams.subscription(request, room, user, since, "ws") as sub:
        if user.is_new:
            await sessions.save_for_stream(request, ws)
        await ws.prepare(request)
        sub.abort = lambda: _abort(request)
        sub.last_seen = time.monotonic()
        # The connection ends when either side does: a client that hangs
        # up, or a sender that closed it (shutdown, overflow, Redis lost).
        sender = asyncio.create_task(_send(ws, sub, request.app))
        limit = posting.rate_key(request, user)
        receiver = asyncio.create_task(_receive(ws, sub, request.app, room, user, limit))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            sub.close()
            # Let a closing handshake the sender started finish (the client
            # then sees our close code, not 1006), within the close timeout.
            await asyncio.wait({sender}, timeout=CLOSE_TIMEOUT_S + 0.5)
        finally:
            sub.close()
            for task in (sender, receiver):
                task.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                    await task
    return ws


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


async def _send(ws: web.WebSocketResponse, sub: Subscription, app: web.Application) -> None:
    metrics = app[keys.METRICS]
    try:
        async for event in sub.events(app[keys.BROKER]):
            if isinstance(event, list):
                # send_frame, not send_str: the bytes were encoded once for
                # every subscriber, send_str would encode them again for each.
                for message in event:
                    await ws.send_frame(message.ws_frame, WSMsgType.TEXT)
                metrics.deliveries += len(event)
            elif isinstance(event, Presence):
                await ws.send_frame(event.ws_frame, WSMsgType.TEXT)
            else:
                await ws.ping()
            sub.progressed()
        code = CLOSE_CODES.get(sub.close_reason, WSCloseCode.GOING_AWAY)
        await ws.close(code=code, message=sub.close_reason.encode())
    except RedisError:
        # The replay could not be read; the client retries once Redis is back.
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"Redis is unavailable")
    except Overflow:
        # Cut off a client that does not keep up; it resumes with ?since=.
        sub.abort()
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away


async def _receive(
    ws: web.WebSocketResponse,
    sub: Subscription,
    app: web.Application,
    room: str,
    user: User,
    rate_key: str,
) -> None:
    while True:
        msg = await ws.receive()
        sub.last_seen = time.monotonic()
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(await _handle_text(msg.data, app, room, user, rate_key))
        elif msg.type == WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type == WSMsgType.PONG:
            pass
        elif msg.type == WSMsgType.BINARY:
            await ws.close(
                code=WSCloseCode.UNSUPPORTED_DATA, message=b"binary frames are not supported"
            )
            return
        else:  # CLOSE, CLOSING, CLOSED, or ERROR (aiohttp has already closed it, 1009 if oversize)
            return


def _frame(kind: str, ref: Any, **fields: Any) -> str:
    return json.dumps(
        {"type": kind, "ref": ref, **fields}, ensure_ascii=False, separators=(",", ":")
    )


async def _handle_text(
    text: str, app: web.Application, room: str, user: User, rate_key: str
) -> str:
    """Answer one client frame with an ack or an error frame; never raises a ChatError."""
    ref: Any = None
    try:
        data = posting.json_object(text, "frame")
        ref = data.get("ref")
        if not (ref is None or (isinstance(ref, (str, int, float)) and not isinstance(ref, bool))):
            ref = None
            raise BadRequest("'ref' must be a string or a number")
        if isinstance(ref, str) and len(ref) > 128:
            ref = None
            raise BadRequest("'ref' is longer than 128 characters")
        if data.get("type") != "message":
            raise BadRequest(f"unknown frame type {data.get('type')!r}; expected 'message'")
        name = await app[keys.CONNECTIONS].name(user.user_id) or user.name
        message = await posting.post(
            app,
            room,
            sessions.User(user.user_id, name, is_new=False),
            data.get("text"),
            rate_key=rate_key,
        )
    except ChatError as exc:
        error = error_payload(exc)
        if exc.retry_after:
            error["retry_after"] = str(exc.retry_after)
        return _frame("error", ref, error=error)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        return _frame("error", ref, error=error_payload(Unavailable("Redis is unavailable; retry")))
    return f'{{"type":"ack","ref":{json.dumps(ref)},"message":{message.json}}}'
