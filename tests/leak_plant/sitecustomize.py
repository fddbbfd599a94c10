"""A leak planted in the chat server's processes by the soak's own test, never
shipped: on ``PYTHONPATH`` as ``sitecustomize``, Python imports it at start.

Every connection a worker accepts starts a task that never ends (kept here,
as a registry of callbacks or a forgotten handler would keep it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web_protocol

_never_ending: list[asyncio.Task[Any]] = []
_accepted = web_protocol.RequestHandler.connection_made


def _connection_made(self: web_protocol.RequestHandler, transport: asyncio.BaseTransport) -> None:
    _accepted(self, transport)
    _never_ending.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))


web_protocol.RequestHandler.connection_made = _connection_made  # type: ignore[method-assign]
