"""Webhook events: their kinds, the body POSTed for one, its signature, and
when a failed delivery is tried again.

No I/O here: the outbox in Redis is :mod:`server.store.outbox`, delivery is
:mod:`server.process.deliverer`.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from typing import Any

from ..common.settings_types import WEBHOOK_EVENTS
from .wire import to_json

KINDS = MESSAGE_CREATED, MESSAGE_UPDATED, MESSAGE_DELETED, USER_JOINED, USER_LEFT = WEBHOOK_EVENTS

SIGNATURE_HEADER = "Chat-Signature"

# Retries: the first after about FIRST_DELAY_S, each wait doubling up to
# LONGEST_DELAY_S, each drawn between half and all of that (jitter, so that
# rooms that failed together do not all come back at once).
FIRST_DELAY_S = 0.5
LONGEST_DELAY_S = 3600.0


@dataclass(frozen=True)
class WebhookEvent:
    """One event as it is POSTed: ``id`` is the same on every try."""

    id: str
    type: str
    created: float
    data: dict[str, Any]

    def body(self) -> bytes:
        return to_json(
            {"id": self.id, "type": self.type, "created": self.created, "data": self.data}
        ).encode()


def event_id(room: str, entry_id: str) -> str:
    """The id of the event kept as entry ``entry_id`` of ``room``'s outbox.

    Entry ids grow within an outbox, which is kept (empty) for a day after it
    was emptied, so the pair never names two events."""
    return f"{room}/{entry_id}"


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Chat-Signature`` header: ``t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">``."""
    mac = hmac.new(secret.encode(), b"%d." % timestamp + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_delay(tries: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``tries``-th failed delivery of an event."""
    ceiling = min(LONGEST_DELAY_S, FIRST_DELAY_S * 2.0 ** min(tries - 1, 32))
    fraction: float = (rng or random).uniform(0.5, 1.0)
    return ceiling * fraction
