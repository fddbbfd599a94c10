"""Why the server ends a connection, as told to clients."""

from __future__ import annotations

import enum


class CloseReason(enum.StrEnum):
    SHUTDOWN = "shutdown"  # the worker stops
    RELOAD = "reload"  # a new generation of workers replaces this one
    IDLE = "idle"  # the client was silent too long
    UNAVAILABLE = "unavailable"  # Redis could not be read
    OVERFLOW = "overflow"  # a slow consumer, cut off
    GONE = "gone"  # the client left
    AUTH_EXPIRED = "auth_expired"  # the sign-in's token expired, and no newer one came
    SIGNED_OUT = "signed_out"  # the session signed out
    DISCONNECTED = "disconnected"  # the application ended the user's streams; it may come back
    REMOVED = "removed"  # the application ended them, and it may not come back (so far)
    BANNED = "banned"  # the user is banned (everywhere, or in the room)


# The members as module constants too, as the signal module has its signals.
SHUTDOWN = CloseReason.SHUTDOWN
RELOAD = CloseReason.RELOAD
IDLE = CloseReason.IDLE
UNAVAILABLE = CloseReason.UNAVAILABLE
OVERFLOW = CloseReason.OVERFLOW
AUTH_EXPIRED = CloseReason.AUTH_EXPIRED
SIGNED_OUT = CloseReason.SIGNED_OUT
DISCONNECTED = CloseReason.DISCONNECTED
REMOVED = CloseReason.REMOVED
BANNED = CloseReason.BANNED
# What the application's moderation may end streams for (server.web.moderation).
MODERATION = frozenset({DISCONNECTED, REMOVED, BANNED})
