"""A resumed connection's replay: what the room's history holds after its resume id.

Bounded per worker, not only per connection. A replay reads a page of
history and writes it only within one of the hub's replay slots
(``replays_per_worker``, a FIFO semaphore), and only as far as the socket
takes it: when the client does not keep up, the rest of the page is dropped
and the slot given back; once the socket drains (within ``idle_timeout_s``,
or the connection is cut off), the replay waits for a slot again and reads
on from the last message written. A replay waiting for its turn or for its
client holds no page, and a slot is never held while a client is waited
for, so turns come quickly: a worker holds at most one page per slot,
however many clients resume at once or stop reading mid-replay. A page is
``REPLAY_PAGE`` messages, fewer when messages may be longer than
``REPLAY_PAGE_CHARS`` characters in all.

The replay goes as far as the room's cursor (what this worker has
dispatched): every later message reaches the connection's queue live (see
:mod:`server.core.hub`). A resume id at or past the cursor reads nothing at all,
and takes no slot.

Honest resume: the server knows nothing of what the client saw before its
resume id, so a message that began the room's history again (its ``prev``
is ``(0, 0)``: the room expired, or Redis lost it) or whose predecessor is
unknown is announced as a gap, as is one whose ``prev`` is newer than the
resume id. Resuming from ``(0, 0)`` says the client has seen nothing of the
room: it gets the whole history, announced as a gap when that no longer
starts at the room's first message.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from .ids import FIRST_ID, MessageId
from .model import Message

if TYPE_CHECKING:
    from .subscription import Subscription

# Messages read per replay page, and the most characters of text a page may
# hold: with longer messages allowed, pages have fewer of them.
REPLAY_PAGE = 100
REPLAY_PAGE_CHARS = 200_000


def replay_page(message_max_chars: int) -> int:
    """Messages per replay page when messages may be this long (at most ``REPLAY_PAGE``)."""
    return max(1, min(REPLAY_PAGE, REPLAY_PAGE_CHARS // message_max_chars))


async def replay(sub: Subscription) -> None:
    """Write what the history holds after the connection's resume id, a page per turn.

    Raises TimeoutError for a client that stopped reading, and the backend's
    failures when the history cannot be read.
    """
    room = sub.room
    hub = room.hub
    sink = sub.sink
    assert sink is not None
    size = hub.replay_page
    told: MessageId | None = None  # the message whose gap notice is written
    sent = 0
    try:
        while not sub.closed and sub.last_id < room.cursor:
            async with hub.replays:
                if sub.closed:
                    return
                page = collections.deque(await hub.backend.read_after(room.name, sub.last_id, size))
                last_page = len(page) < size
                while page and not sub.closed:
                    message = page[0]
                    if told != message.parsed_id and _missed_on_resume(message, sub.last_id):
                        if not sink.send(message.gap):
                            break
                        told = message.parsed_id
                    if not sink.send(message):
                        break
                    sub.wrote(page.popleft())
                    sent += 1
                stalled = bool(page)
                # Nothing of the page is kept while the client catches up:
                # what it did not take is read again on the next turn.
                page.clear()
            if stalled:
                if not sub.closed:
                    await sub.drained()
            elif last_page:
                return
    finally:
        room.metrics.replayed(sent)


def _missed_on_resume(message: Message, last_id: MessageId) -> bool:
    """Whether a client that resumed from ``last_id`` may have missed messages before this one.

    ``(0, 0)``: the client has seen nothing, and missed something unless this
    is the first message the room ever had. A ``prev`` of ``(0, 0)`` after a
    real id means the room's history began again after that id: what the
    client missed of the old one cannot be known, so it is told.
    """
    prev = message.prev
    if prev == FIRST_ID:
        return last_id != FIRST_ID
    return prev is None or prev > last_id
