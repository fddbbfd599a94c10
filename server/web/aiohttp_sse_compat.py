"""What the SSE transport relies on of aiohttp-sse beyond its documented API.

Checked on aiohttp-sse 3.0; ``tests/test_compat_aiohttp_sse.py`` fails when
one of these changes. Check them against a new aiohttp-sse release.

``EventSourceResponse.prepare`` starts ``self._ping()`` as a task and keeps
it in ``self._ping_task``; ``wait()`` awaits that task, ``stop_streaming()``
(and so leaving ``async with response``) cancels it, and ``is_connected()``
reads it. :class:`EventStream` overrides the one and sets the other. (It
also keeps its headers for its first write: an aiohttp name, see
:mod:`server.web.aiohttp_compat`.)
(aiohttp-sse has no way to turn its pings off: ``ping_interval`` must be
positive, and a long one still keeps a sleeping task per connection.)
Its ``prepare`` asserts that the request still has a transport: one whose
client reset it meanwhile raises ``ConnectionResetError`` here instead.
"""

from __future__ import annotations

import asyncio

from aiohttp.abc import AbstractStreamWriter
from aiohttp.web import BaseRequest
from aiohttp_sse import EventSourceResponse

# The releases these were checked on (tests/test_compat_aiohttp_sse.py says
# when another is installed: check it, then add it).
CHECKED_ON = ("3.0",)


class EventStream(EventSourceResponse):
    """aiohttp-sse's response without its ping task.

    The worker heartbeat pings every connection, and a task per connection
    that sleeps between pings would cost memory for nothing. (aiohttp-sse
    starts ``_ping`` in ``prepare``; this one returns at once.)
    """

    # Its headers go out with its first write (the reconnect hint), in one
    # send instead of two, as aiohttp's own ``web.Response`` does (see
    # :mod:`server.web.aiohttp_compat`).
    _send_headers_immediately = False

    async def _ping(self) -> None:
        return

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if not self.prepared and request.transport is None:
            # The client left before the stream's head went out (a reset while
            # the stream was admitted): aiohttp-sse would fail an assertion.
            raise ConnectionResetError("the client went away")
        return await super().prepare(request)

    def end_with(self, done: asyncio.Future[None]) -> None:
        """Let aiohttp-sse's ``wait``/``stop_streaming`` follow ``done`` instead of its task.

        The finished ping task is then not kept for the whole life of the stream.
        """
        self._ping_task = done  # type: ignore[assignment]
