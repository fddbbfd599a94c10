"""What SSE and WebSocket connections share: resume ids, registration, and teardown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError

from ...common.metrics import Metrics
from ...core.errors import BadRequest, Banned, TooManyStreams, Unavailable
from ...core.hub import Closing, Hub
from ...core.ids import MessageId, parse_id
from ...core.presence import Announcer
from ...core.subscription import Subscription
from ...store import failures
from ...store.admission import Admission
from ...store.batch import Batch
from ...store.connection_registry import ConnectionRegistry
from ...store.failures import is_out_of_memory
from ...store.keys import name_key
from ...store.presence_store import Holder
from ...store.ratelimit import RateLimiter
from ..addresses import owner_of
from ..sessions import NEW_SESSION_TTL_S, Sessions, User, queue_save, too_many_sessions
from ..signin import stream_expiry

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


class Connections:
    """Opening a connection, with what it takes: the hub it subscribes to,
    the registry it is counted and seen in (presence), and the checks that
    come first (a new session's charge, the limits on open streams)."""

    __slots__ = (
        "address_streams",
        "admission",
        "announcer",
        "hub",
        "limiter",
        "metrics",
        "redis",
        "registry",
        "sessions",
        "streams_per_session",
    )

    def __init__(
        self,
        hub: Hub,
        registry: ConnectionRegistry,
        sessions: Sessions,
        announcer: Announcer,
        limiter: RateLimiter,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        streams_per_session: int,
        address_streams: int,
    ) -> None:
        self.hub = hub
        self.registry = registry
        self.sessions = sessions
        self.announcer = announcer
        self.limiter = limiter
        self.redis = redis
        self.metrics = metrics
        self.streams_per_session = streams_per_session
        self.address_streams = address_streams
        self.admission = Admission(redis, registry, limiter)

    def opened(
        self,
        request: web.Request,
        response: web.StreamResponse,
        room: str,
        user: User,
        since: MessageId | None,
        transport: str,
    ) -> Opened:
        """Subscribe to a room and register the connection for presence and the
        connection limits, for the ``async with`` block (see :meth:`open`)."""
        return Opened(self, request, response, room, user, since, transport)

    async def open(
        self,
        request: web.Request,
        response: web.StreamResponse,
        room: str,
        user: User,
        since: MessageId | None,
        transport: str,
    ) -> tuple[Subscription, str]:
        """Subscribe to a room and register the connection for presence and the
        connection limits; the subscription and the client's address. Undone by
        :meth:`close`.

        Registering it charges a new session to its address (``user`` comes
        from ``current_user(charge=False)``), checks the limits on open streams,
        and only then saves a changed session (its cookie goes on ``response``,
        not yet prepared) and joins the room's presence (see :meth:`_register`).
        """
        hub = self.hub
        identity = user.identity
        expiry = None if identity is None else await stream_expiry(request, identity)
        try:
            sub = await hub.subscribe(room, user.user_id, since)
        except Closing:
            raise Unavailable("this worker is stopping; reconnect") from None
        sub.expiry = expiry
        address = owner_of(request.remote)
        try:
            await self._register(request, response, sub, user, address)
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
        self.metrics.connection_opened(transport)
        try:
            if not sub.has_presence:
                # The first connection to the room on this worker: nobody here
                # knows its presence yet. (A user coming online in a room is
                # announced to every worker through the room's channel.)
                self.announcer.announce_soon(room)
        except BaseException:
            await self.close(sub, user, address, transport)
            raise
        return sub, address

    async def close(self, sub: Subscription, user: User, address: str, transport: str) -> None:
        """Undo :meth:`open`."""
        self.metrics.connection_closed(transport)
        self.hub.unsubscribe(sub)
        # Runs even when the handler was cancelled by a disconnect; bounded so
        # that a Redis outage cannot hold a closing connection open.
        try:
            async with asyncio.timeout(2):
                await self.registry.close(sub.room.name, Holder(user.user_id, address), sub.id)
        except (*failures.FAILURES, TimeoutError) as exc:
            log.debug("could not unregister stream %s: %s", sub.id, exc)

    async def _register(
        self,
        request: web.Request,
        response: web.StreamResponse,
        sub: Subscription,
        user: User,
        address: str,
    ) -> None:
        """Check, then write: the round trips of :meth:`opened`.

        Admitting the stream charges a new session to its address, checks
        the user's bans and takes the stream's slots from its owners' limits;
        only when every one allows it are the session (and the new user's
        name) saved (in the same script on one Redis, see
        :mod:`server.store.admission`) and the room's presence joined. A
        refused stream writes nothing but its budgets' counts.
        """
        registry = self.registry
        room = sub.room.name
        holder = Holder(user.user_id, address)
        charges = (self.sessions.new_session_charge(request),) if user.is_new else ()
        writes = Batch(self.redis)
        if user.unsaved:
            await queue_save(request, response, writes)
        name = user.token_name
        if name is not None:  # (what presence shows: the token's name)
            key, ttl_s = name_key(user.user_id), registry.name_ttl_s
            writes.commands(
                lambda pipe: pipe.execute_command("SET", key, name, "EX", ttl_s), lambda r: None
            )
        admitted = await self.admission.admit(
            room,
            holder,
            sub.id,
            charges=charges,
            ttl_s=NEW_SESSION_TTL_S if user.is_new else None,
            writes=writes,
        )
        if admitted.banned:
            raise Banned("you are banned from this room")
        if admitted.wait:
            raise too_many_sessions(admitted.wait)
        full = admitted.full
        if full is not None:
            self.metrics.rate_limited(f"{'' if full == 'session' else 'address_'}streams")
            raise TooManyStreams(
                f"at most {self.streams_per_session} open streams per session"
                if full == "session"
                else f"at most {self.address_streams} open streams per client address",
                retry_after=STREAM_RETRY_AFTER_S,
            )
        await registry.join(room, holder, sub.id, batch=admitted.writes)


class Opened:
    """:meth:`Connections.opened`: :meth:`~Connections.open` on entering,
    :meth:`~Connections.close` on leaving.

    An object rather than a generator-based context manager: every open
    stream would hold the generator's suspended frame (and the event loop's
    record of it), about 600 bytes a connection.
    """

    __slots__ = ("_address", "_connections", "_opening", "_sub", "_transport", "_user")

    def __init__(
        self,
        connections: Connections,
        request: web.Request,
        response: web.StreamResponse,
        room: str,
        user: User,
        since: MessageId | None,
        transport: str,
    ) -> None:
        self._connections = connections
        self._opening: Callable[[], Awaitable[tuple[Subscription, str]]] | None = partial(
            connections.open, request, response, room, user, since, transport
        )
        self._user = user
        self._transport = transport
        self._sub: Subscription | None = None
        self._address = ""

    async def __aenter__(self) -> Subscription:
        assert self._opening is not None
        opening, self._opening = self._opening, None  # (not holding the request)
        self._sub, self._address = await opening()
        return self._sub

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._sub is not None
        await self._connections.close(self._sub, self._user, self._address, self._transport)
