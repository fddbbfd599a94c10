"""What the two peers (``peer_bare``, ``peer_socketio``) answer alike, as the chat
server does: its room names, its checks of a posted message and its error bodies."""

from __future__ import annotations

import json
import re

from aiohttp import web

ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MESSAGE_MAX_CHARS = 2000


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": str(status), "message": message}}, status=status)


def message_text(body: bytes) -> str | web.Response:
    """The text of a posted message from the request's body, or the error response
    when the body is not one."""
    try:
        fields = json.loads(body)
    except ValueError:
        return error(400, "body is not valid JSON")
    text = fields.get("text") if isinstance(fields, dict) else None
    if not isinstance(text, str) or not text.strip():
        return error(400, "'text' must be a non-empty string")
    if len(text) > MESSAGE_MAX_CHARS:
        return error(413, f"'text' is longer than {MESSAGE_MAX_CHARS} characters")
    return text
