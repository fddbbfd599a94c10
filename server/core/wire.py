"""Wire encodings: JSON as the server writes and reads it, SSE chunks, WebSocket frames."""

from __future__ import annotations

import json
import struct
from typing import Any


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Made once: json.dumps and json.loads make an encoder or decoder for each
# call that asks for anything but their defaults. (Neither keeps state
# between calls.)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def to_json(value: Any) -> str:
    """Compact JSON, non-ASCII text as it is: what every body and frame carries."""
    return _ENCODER.encode(value)


def parse_json(text: str) -> Any:
    """Strict JSON: NaN and Infinity (which Python accepts) are refused too.

    Raises ValueError, or RecursionError for absurdly deep nesting.
    """
    return _DECODER.decode(text)


def sse_chunk(frame: bytes) -> bytes:
    """An SSE frame as one chunk of a chunked HTTP response, ready for ``transport.write``."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def ws_text(payload: bytes) -> bytes:
    """A whole WebSocket text frame as a server sends it.

    Server frames are not masked (RFC 6455, 5.1), so the same bytes can be
    written to every connection that did not negotiate compression.
    """
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload
