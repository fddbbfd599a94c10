"""A resumed connection's replay: what the room's history holds after its resume id.

Bounded per worker, not only per connection. A replay reads a page of
history and writes it only within one of the hub's replay slots
(``replays_per_worker``, a FIFO semaphore), and only as far as the socket
takes it: when the client does not keep up, the rest of the page is dropped
and the slot given back; once the socket drains (within ``idle_timeout_s``,
or the connection is cut off), the replay waits for a slot again and reads
on from the last message written. A replay waiting for its turn or for its
client holds no page, and a slot is never held while a client is waited
for, so turns come quickly: a worker holds at most one page per slot
(and as many kept for replays that ask for the same, below), however many
clients resume at once or stop reading mid-replay. A page is
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

Shared pages: clients that come back together (a reload, a network that
dropped them all) mostly resume from the same id, the last message they all
got. A page is read once for all of them (:class:`SharedPages`): the same
messages, parsed and encoded once, while nothing newer was dispatched in
the room. Such a page holds every message up to the room's cursor when it
was read, which is all a replay needs as long as the cursor has not moved
(what comes later reaches each connection's queue live).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .ids import FIRST_ID, MessageId
from .model import Message

if TYPE_CHECKING:
    from .hub import Room
    from .subscription import Subscription

# Messages read per replay page, and the most characters of text a page may
# hold: with longer messages allowed, pages have fewer of them.
REPLAY_PAGE = 100
REPLAY_PAGE_CHARS = 200_000


# How long a page read for one replay serves others (while the room's cursor
# stays), and by default the most pages a worker keeps for that at once.
PAGE_KEEP_S = 1.0
PAGES_KEPT = 16

# Reads up to ``count`` messages of a room after an id (the backend's read_after).
PageReader = Callable[[str, MessageId, int], Coroutine[Any, Any, list[Message]]]


class SharedPages:
    """Pages of history, each read once for every replay that asks for it.

    A page is known by its room, the room's cursor when it was asked for,
    the id it starts after and its size: a replay asking for the same while
    the cursor has not moved shares the read (under way, or done within
    ``keep_s``). At most ``most`` pages are kept; past that a replay reads
    its own. A read that fails is not kept: each replay waiting on it gets
    the failure, and the next one reads again.
    """

    def __init__(self, read: PageReader, keep_s: float = PAGE_KEEP_S, most: int = PAGES_KEPT):
        self._read = read
        self.keep_s = keep_s
        self.most = most
        self._pages: dict[tuple[str, MessageId, MessageId, int], asyncio.Task[list[Message]]] = {}

    async def read(self, room: Room, after: MessageId, count: int) -> list[Message]:
        """Up to ``count`` messages of ``room`` after ``after`` (shared: not to be changed)."""
        key = (room.name, room.cursor, after, count)
        task = self._pages.get(key)
        if task is None:
            if len(self._pages) >= self.most:
                return await self._read(room.name, after, count)
            task = asyncio.get_running_loop().create_task(self._read(room.name, after, count))
            self._pages[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        # (One replay going away does not cancel the read the others wait for.)
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, MessageId, MessageId, int], task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._forget(key, task)
        else:
            asyncio.get_running_loop().call_later(self.keep_s, self._forget, key, task)

    def _forget(self, key: tuple[str, MessageId, MessageId, int], task: asyncio.Task[Any]) -> None:
        if self._pages.get(key) is task:
            del self._pages[key]


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
                page = collections.deque(await hub.pages.read(room, sub.last_id, size))
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
