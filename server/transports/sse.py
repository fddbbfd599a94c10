"""``GET /api/rooms/{room}/events``: Server-Sent Events with aiohttp-sse."""

from __future__ import annotations

import contextlib

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from redis.exceptions import RedisError

from .. import keys, posting, sessions, streams
from ..hub import Overflow, Presence

PING_FRAME = b": ping\n\n"
RETRY_MS = 1000
REDIS_RETRY_MS = 2000


def _reconnect(reason: str, retry_ms: int = RETRY_MS) -> bytes:
    """The last event of a stream the server ends: why, and when to come back."""
    return f"event: reconnect\ndata: {reason}\nretry: {retry_ms}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    room = posting.room_name(request.match_info["room"])
    header = request.headers.get("Last-Event-ID")
    since = streams.resume_id(
        header if header is not None else request.query.get("last_event_id"), "Last-Event-ID"
    )
    user = await sessions.current_user(request)
    config = request.app[keys.CONFIG]
    broker = request.app[keys.BROKER]
    metrics = request.app[keys.METRICS]
    async with streams.subscription(request, room, user, since, "sse") as sub:
        # aiohttp-sse's own ping is left idle: the worker heartbeat pings
        # every stream, so that it can also tell which ones stopped reading.
        response = EventSourceResponse(ping_interval=1e9, send_timeout=config.idle_timeout_s)
        if user.is_new:
            await sessions.save_for_stream(request, response)
        await response.prepare(request)
        sub.abort = response._abort_transport  # public API has none; see aiohttp-sse
        async with response:
            try:
                await response.write(f"retry: {RETRY_MS}\n\n".encode())
                async for event in sub.events(broker):
                    if isinstance(event, list):
                        await response.write(b"".join(m.sse_frame for m in event))
                        metrics.deliveries += len(event)
                    elif isinstance(event, Presence):
                        await response.write(event.sse_frame)
                    else:
                        await response.write(PING_FRAME)
                    sub.progressed()
                if sub.close_reason in (streams.SHUTDOWN, streams.RELOAD):
                    await response.write(_reconnect(sub.close_reason))
            except RedisError:
                # The replay could not be read: the client retries (and
                # resumes from its last id) once Redis is back.
                with contextlib.suppress(ConnectionResetError, RuntimeError):
                    await response.write(_reconnect(streams.UNAVAILABLE, REDIS_RETRY_MS))
            except Overflow:
                # Writing more to a client that does not read would block:
                # drop the connection; it reconnects and resumes from its last id.
                sub.abort()
            except (ConnectionResetError, RuntimeError):
                pass  # the client went away
        return response
