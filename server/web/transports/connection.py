"""What SSE and WebSocket connections share: resume ids, registration, and teardown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.exceptions import ResponseError

from ...core.errors import BadRequest, TooManyStreams, Unavailable
from ...core.hub import Closing
from ...core.ids import MessageId, parse_id
from ...core.subscription import Subscription
from ...store import failures
from ...store.batch import Batch
from ...store.failures import is_out_of_memory
from ...store.presence_store import Holder
from .. import sessions
from .. import state as keys
from ..addresses import budget_key
from ..sessions import NEW_SESSION_TTL_S, User

log = logging.getLogger(__name__)

# A client over its number of open streams may try again once one of its
# streams has closed: there is no telling when, so a few seconds.
STREAM_RETRY_AFTER_S = 5


def resume_id(value: str | None, name: str) -> MessageId | None:
    if value is None or value == "":
        return None
    message_id = parse_id(value.strip())
    if message_id is None:
        raise BadRequest(f"{name} must be a message id like 1700000000000-0")
    return message_id


@contextlib.asynccontextmanager
async def opened(
    request: web.Request,
    response: web.StreamResponse,
    room: str,
    user: User,
    since: MessageId | None,
    transport: str,
) -> AsyncIterator[Subscription]:
    """Subscribe to a room and register the connection for presence and the connection limits.

    Registering it charges a new session to its address (``user`` comes
    from ``current_user(charge=False)``), checks the limits on open streams,
    and only then saves a changed session (its cookie goes on ``response``,
    not yet prepared) and joins the room's presence (see :func:`_register`).
    """
    app = request.app
    hub = app[keys.HUB]
    connections = app[keys.CONNECTIONS]
    try:
        sub = await hub.subscribe(room, user.user_id, since)
    except Closing:
        raise Unavailable("this worker is stopping; reconnect") from None
    address = budget_key(request.remote)
    try:
        await _register(request, response, sub, user, address)
    except ResponseError as exc:
        if not is_out_of_memory(exc) or user.unsaved:
            # (A session Redis cannot store would be a new identity on every request.)
            hub.unsubscribe(sub)
            raise
        # Redis is full and refuses to record the connection (presence, the
        # per-session count). The connection itself only reads: serve it
        # unrecorded rather than turn readers away while Redis is full.
        log.debug("Redis is full: a %s stream in %s is not in presence", transport, room)
    except BaseException:
        hub.unsubscribe(sub)
        raise
    metrics = app[keys.METRICS]
    metrics.connection_opened(transport)
    try:
        if not sub.has_presence:
            # The first connection to the room on this worker: nobody here
            # knows its presence yet. (A user coming online in a room is
            # announced to every worker through the room's channel.)
            app[keys.ANNOUNCER].announce_soon(room)
        yield sub
    finally:
        metrics.connection_closed(transport)
        hub.unsubscribe(sub)
        # Runs even when the handler was cancelled by a disconnect; bounded so
        # that a Redis outage cannot hold a closing connection open.
        try:
            async with asyncio.timeout(2):
                await connections.close(room, Holder(user.user_id, address), sub.id)
        except (*failures.FAILURES, TimeoutError) as exc:
            log.debug("could not unregister stream %s: %s", sub.id, exc)


async def _register(
    request: web.Request,
    response: web.StreamResponse,
    sub: Subscription,
    user: User,
    address: str,
) -> None:
    """Check, then write: the round trips of :func:`opened`.

    The first charges a new session to its address and takes the stream's
    slots from its owners' limits; only when every one allows it does the
    second save the session (and the new user's name) and join the room's
    presence. A refused stream writes nothing but those counts.
    """
    app = request.app
    connections = app[keys.CONNECTIONS]
    limiter = app[keys.RATE_LIMITER]
    room = sub.room.name
    charges = (sessions.new_session_charge(request),) if user.is_new else ()
    checks = Batch(app[keys.REDIS])
    verdict = limiter.charge(checks, *charges)
    full = await connections.reserve(
        room,
        user.user_id,
        sub.id,
        address,
        ttl_s=NEW_SESSION_TTL_S if user.is_new else None,
        batch=checks,
    )
    if verdict.value.wait:
        if full is None:
            await connections.release(room, Holder(user.user_id, address), sub.id)
        raise sessions.too_many_sessions(verdict.value.wait)
    if full is not None:
        config = app[keys.CONFIG]
        app[keys.METRICS].rate_limited(f"{'' if full == 'session' else 'address_'}streams")
        raise TooManyStreams(
            f"at most {config.streams_per_session} open streams per session"
            if full == "session"
            else f"at most {config.address_streams} open streams per client address",
            retry_after=STREAM_RETRY_AFTER_S,
        )
    writes = Batch(app[keys.REDIS])
    if user.unsaved:
        await sessions.queue_save(request, response, writes)
    await connections.join(room, Holder(user.user_id, address), sub.id, batch=writes)
