"""Reading a room's history over HTTP, the same for the browser API and the server API.

A page of history is ``limit`` messages, oldest first: the newest ones
before ``before`` (or the newest of all), or, with ``after``, the first ones
after that id (before ``before`` too, when both are given). A big page is
read and written a page of :data:`HISTORY_PAGE_CHARS` at a time, so that a
client that reads slowly holds one page's bytes here, not the whole history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from ..core.errors import BadRequest
from ..core.ids import FIRST_ID, LAST_ID, MessageId, format_id, parse_id
from ..core.model import Message
from ..store import failures
from ..store.broker import Broker
from .aiohttp_compat import protocol_of
from .middlewares import ThrottledErrorLog

HISTORY_LIMIT_MAX = 200
# What a page of history may take (in characters of text, message_max_chars
# each at most), read from Redis and written at once: at the default 2000,
# 50 messages (the page's own request: one round trip), at 8000, 12.
HISTORY_PAGE_CHARS = 100_000

# What comes after the messages written so far: the next page after the
# last id written (empty: the end).
NextPage = Callable[[str], Awaitable[list[Message]]]


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer") from None
    if not 1 <= value <= maximum:
        raise BadRequest(f"'{name}' must be between 1 and {maximum}")
    return value


def id_param(request: web.Request, name: str) -> MessageId | None:
    """A message id of the query (None without one), or BadRequest."""
    raw = request.query.get(name)
    if raw is None:
        return None
    parsed = parse_id(raw)
    if parsed is None:
        raise BadRequest(f"'{name}' must be a message id like 1700000000000-0")
    return parsed


class History:
    """A room's history as a JSON answer ``{"messages": [...]}``."""

    __slots__ = ("broker", "page", "redis_errors")

    def __init__(self, broker: Broker, redis_errors: ThrottledErrorLog, max_chars: int) -> None:
        self.broker = broker
        self.redis_errors = redis_errors
        # A page of history: as many messages as HISTORY_PAGE_CHARS may hold.
        self.page = max(1, HISTORY_PAGE_CHARS // max_chars)

    async def respond(
        self,
        request: web.Request,
        room: str,
        limit: int,
        before: MessageId | None,
        after: MessageId | None = None,
    ) -> web.StreamResponse:
        """The answer to a history request of ``room`` (its parameters parsed)."""
        if after is not None:
            return await self._after(request, room, limit, before, after)
        page = self.page
        broker = self.broker
        messages, until = await broker.history(room, limit, before, page)
        if until is None:
            return whole(messages)

        async def next_page(last: str) -> list[Message]:
            if last == until:
                return []
            return await broker.history_after(room, last, until, page)

        return await self._in_pages(request, messages, next_page)

    async def _after(
        self,
        request: web.Request,
        room: str,
        limit: int,
        before: MessageId | None,
        after: MessageId,
    ) -> web.StreamResponse:
        if after == LAST_ID or before == FIRST_ID:
            return whole([])  # nothing can follow (and Redis refuses the range)
        # (An exclusive end: XRANGE takes "(id" on either side.)
        until = "+" if before is None else "(" + format_id(before)
        broker = self.broker
        page = self.page
        left = limit

        async def next_page(last: str) -> list[Message]:
            nonlocal left
            if left <= 0:
                return []
            messages = await broker.history_after(room, last, until, min(page, left))
            left -= len(messages)
            if len(messages) < page:
                left = 0  # (that was the end of the range)
            return messages

        first = await next_page(format_id(after))
        if left <= 0:
            return whole(first)
        return await self._in_pages(request, first, next_page)

    async def _in_pages(
        self, request: web.Request, messages: list[Message], next_page: NextPage
    ) -> web.StreamResponse:
        """The same JSON as one page, written (chunked) a page at a time, each
        read only once the connection has taken the last: a client that reads
        slowly, or not at all, holds one page's bytes here, not a whole history."""
        response = web.StreamResponse()
        response.content_type = "application/json"
        response.charset = "utf-8"
        await response.prepare(request)
        if request.method == hdrs.METH_HEAD:
            return response  # (aiohttp would write what follows)
        opening = '{"messages":['
        try:
            while messages:
                last = messages[-1].id
                chunk = (opening + ",".join(m.json for m in messages)).encode()
                opening, messages = ",", []  # (nothing but the bytes is kept meanwhile)
                await response.write(chunk)
                del chunk
                messages = await next_page(last)
            await response.write(b"]}" if opening == "," else b'{"messages":[]}')
        except ConnectionError:
            pass  # the client left, or was cut off (see server.web.edge): the handler ends
        except failures.FAILURES as exc:
            # Too late for an error answer: the client sees the body end unfinished.
            self.redis_errors.record(exc, status=0)
            protocol_of(request).force_close()
        return response


def whole(messages: list[Message]) -> web.Response:
    """Messages as one answer, their JSON as stored."""
    body = '{"messages":[' + ",".join(m.json for m in messages) + "]}"
    return web.Response(text=body, content_type="application/json")
