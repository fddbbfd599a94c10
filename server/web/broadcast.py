"""One message in many rooms at once, for the application's backend.

Each room gets the message as :meth:`~server.web.posting.Posting.post`
would store it there for the backend (the same text rules, the same
publish script, no budgets), in a few round trips for all the rooms rather
than two per room: the sender's name (unless given), one pipeline of the
publish script over every room that may not create one, and, for the rooms
that are new, their registration and a second pipeline. A room where Redis
refuses (full, or its shard unreachable on a Cluster) gets its error in its
result; the others are stored all the same.

An idempotency key holds per room: a retry of the same broadcast stores
nothing in the rooms that have the message already (within ten minutes),
and answers each with the message first stored there.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from ..core.errors import ChatError, Unavailable, error_payload, storage_full
from ..core.model import Message
from ..store import failures
from ..store.failures import is_out_of_memory
from ..store.keys import name_key
from ..store.publish import NewRoom
from .message_input import message_text
from .posting import Posting
from .sessions import User, keep_name

log = logging.getLogger(__name__)

Outcome = tuple[Message, bool] | Exception


async def broadcast(
    posting: Posting,
    rooms: list[str],
    user: User,
    text: Any,
    *,
    idempotency_key: str | None,
    arrived: float,
) -> str:
    """Post ``text`` as ``user`` in each of ``rooms`` (distinct, valid);
    the JSON answer ``{"results": [{"room", "message"} or {"room", "error"}]}``."""
    text = message_text(text, posting.max_chars)
    name = user.name
    if name is None:
        kept = await posting.redis.get(name_key(user.user_id))
        name = str(kept) if kept is not None else await keep_name(posting.redis, user.user_id, None)
    broker = posting.broker
    outcomes = dict(
        zip(
            rooms,
            await broker.publish_many(
                rooms, user.user_id, name, text, idempotency_key, may_create=False
            ),
            strict=True,
        )
    )
    new = [room for room, outcome in outcomes.items() if isinstance(outcome, NewRoom)]
    if new:
        try:
            await broker.rooms.register(new)
            created = await broker.publish_many(
                new, user.user_id, name, text, idempotency_key, may_create=True
            )
        except failures.FAILURES as exc:
            created = [exc] * len(new)
        outcomes.update(zip(new, created, strict=True))
    took = time.monotonic() - arrived
    results = [_result(posting, room, outcomes[room], took) for room in rooms]
    return '{"results":[' + ",".join(results) + "]}"


def _result(posting: Posting, room: str, outcome: Outcome, took: float) -> str:
    """One room's entry of the answer (its message counted and its room touched when new)."""
    head = '{"room":' + json.dumps(room)
    if isinstance(outcome, Exception):
        error = _error(outcome)
        posting.metrics.redis_error()
        log.warning("broadcast: %s refused a message: %s", room, outcome)
        return head + ',"error":' + json.dumps(error_payload(error)) + "}"
    message, stored = outcome
    if stored:
        posting.metrics.published(took)
        posting.broker.rooms.touch(room)
    return head + ',"message":' + message.json + "}"


def _error(exc: Exception) -> ChatError:
    if isinstance(exc, ResponseError) and is_out_of_memory(exc):
        return storage_full()
    if isinstance(exc, NewRoom):  # (created and gone again at once: expired meanwhile)
        return Unavailable("the room could not be created; retry shortly")
    return Unavailable("Redis could not store the message here; retry shortly")
