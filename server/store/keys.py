"""Every Redis key and channel name the server uses, in one place.

Names are part of the data: changing one orphans what is stored under the
old name. A room's keys and channel carry the room as a Redis Cluster hash
tag (``{room}``), so that they share a slot and one script may touch them
all; a user's keys carry the user id, an address's the address.
"""

from __future__ import annotations

import zlib


def stream_key(room: str) -> str:
    # The braces are a Redis Cluster hash tag: all of a room's keys share a slot.
    return f"chat:{{{room}}}:messages"


def changes_key(room: str) -> str:
    """The latest state of each edited or deleted message of the room's
    stream: a hash of message id to ``d`` (deleted) or ``<edited ts>\\n<text>``
    (see server.store.edits)."""
    return f"chat:{{{room}}}:changes"


def idempotency_record_key(room: str, user_id: str, key: str) -> str:
    # In the room's slot, so that the publish script may touch it.
    return f"chat:{{{room}}}:idem:{user_id}:{key}"


def channel(room: str) -> str:
    return f"chat:{{{room}}}:live"


def room_of(channel_name: str) -> str | None:
    start, end = channel_name.find("{"), channel_name.rfind("}")
    return channel_name[start + 1 : end] if 0 <= start < end else None


# Presence (see server.store.presence_store).


def room_keys(room: str, worker: str) -> list[str]:
    tag = f"chat:{{{room}}}"
    return [f"{tag}:counts", f"{tag}:users", f"{tag}:leases", f"{tag}:held:{worker}"]


def held_prefix(room: str) -> str:
    return f"chat:{{{room}}}:held:"


def users_key(room: str) -> str:
    return f"chat:{{{room}}}:users"


def key_used_in(user_id: str, key: str) -> str:
    """Where a user's idempotency key names the room it was first used in
    (the user's slot: read with the budgets)."""
    return f"chat:user:{{{user_id}}}:idem:{key}"


def name_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:name"


# The limits on open connections (see server.store.connection_registry). The names
# say "streams", from before an SSE or WebSocket link was called a connection.


def user_connections_key(user_id: str) -> str:
    return f"chat:user:{{{user_id}}}:streams"


def address_connections_key(address: str) -> str:
    return f"chat:address:{{{address}}}:streams"


# Budgets (see server.store.ratelimit).


def budget_key(kind: str, owner: str) -> str:
    return f"chat:rate:{kind}:{{{owner}}}"


# What a sign-out publishes on a room's channel, before the session's tag
# (presence notices are "p", messages "m\n...").
SIGNED_OUT_PREFIX = "s\n"

# What a disconnect publishes on a room's channel: the prefix, then why
# (a close reason), a newline and the user id whose streams there end.
DISCONNECT_PREFIX = "d\n"

# What a typing notice publishes on a room's channel: the prefix, then the
# user id, a newline and the display name (see server.store.typing_store).
TYPING_PREFIX = "t\n"


def typing_key(room: str, user_id: str) -> str:
    """Held (SET NX PX) for two seconds after the user's typing notice in the
    room was published: another one within that time is dropped."""
    return f"chat:{{{room}}}:typing:{user_id}"


# Moderation (see server.store.moderation_store).


def bans_key(user_id: str) -> str:
    """The user's bans: a hash of ``*`` (everywhere) or room names to
    ``<expiry ms, 0 for never>|<reason>``."""
    return f"chat:user:{{{user_id}}}:bans"


def members_key(room: str) -> str:
    """The room's memberships (set through the server API): user id to role."""
    return f"chat:{{{room}}}:members"


# Webhooks (see server.store.outbox and server.store.outbox_queue).


def outbox_key(room: str) -> str:
    """The room's webhook events not delivered yet: a stream, in the room's slot."""
    return f"chat:{{{room}}}:webhooks"


# What a sweep looks for (SCAN MATCH): every room's outbox, nothing else.
OUTBOX_PATTERN = "chat:{*}:webhooks"


def outbox_owner_key(room: str) -> str:
    """The worker delivering the room's events now: its token, with a lease (PX)."""
    return f"chat:{{{room}}}:webhooks:owner"


def outbox_tries_key(room: str) -> str:
    """Failed deliveries so far, by entry id (the head's only, in practice)."""
    return f"chat:{{{room}}}:webhooks:tries"


DUE_SHARDS = 16  # changing it leaves rooms in the old sets, which a sweep recovers


def due_key(shard: int) -> str:
    """Rooms with events to deliver, scored by when (ms; 0: now). Each shard
    has a hash tag of its own, so that a cluster spreads them over its nodes."""
    return f"chat:webhooks:{{due-{shard}}}"


def due_key_of(room: str) -> str:
    return due_key(zlib.crc32(room.encode()) % DUE_SHARDS)


# Published (on one Redis server) when a room becomes due: wakes the deliverers.
DUE_CHANNEL = "chat:webhooks:due"


# Events whose delivery gave up: a hash of event id to the event (JSON).
DEAD_LETTERS_KEY = "chat:webhooks:{dead}"
# Held (SET NX EX) by the one worker that sweeps for lost due marks.
SWEEP_LOCK_KEY = "chat:webhooks:{sweep}"


# A user's rooms and read positions (see server.store.read_marks).


def user_rooms_key(user_id: str) -> str:
    """The rooms the user posted in or read: a sorted set of room to when (ms)."""
    return f"chat:user:{{{user_id}}}:rooms"


def read_positions_key(user_id: str) -> str:
    """How far the user has read in each of its rooms: a hash of room to message id."""
    return f"chat:user:{{{user_id}}}:read"
