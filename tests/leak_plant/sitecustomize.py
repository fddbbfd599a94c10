"""Leaks planted in the chat server's processes by the soak's own test, never
shipped: on ``PYTHONPATH`` as ``sitecustomize``, Python imports it at start.

Every connection a worker accepts starts a task that never ends, and keeps a
duplicate of its socket's descriptor (as a registry of callbacks or a
forgotten handler would keep them).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web_protocol

_never_ending: list[asyncio.Task[Any]] = []
_never_closed: list[int] = []
_accepted = web_protocol.RequestHandler.connection_made


def _connection_made(self: web_protocol.RequestHandler, transport: asyncio.BaseTransport) -> None:
    _accepted(self, transport)
    _never_ending.append(asyncio.get_running_loop().create_task(asyncio.Event().wait()))
    sock = transport.get_extra_info("socket")
    if sock is not None:
        _never_closed.append(os.dup(sock.fileno()))


web_protocol.RequestHandler.connection_made = _connection_made  # type: ignore[method-assign]
