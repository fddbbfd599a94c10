"""``Host`` and ``Origin`` values, parsed strictly.

Both come from the client as text, and the standard library's URL parser
raises on some of it (an unclosed ``[``) and lets other parts through
unchecked (a port of ``99999`` or ``x``). Here a value either parses into
its parts or is ``None``; nothing raises. The settings' origins
(``public_origin``, ``allowed_origins``) are checked with the same rules.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

# A registered name as browsers send it (internationalised names arrive as
# punycode), an IPv4 address, or an IPv6 address in brackets; then an
# optional port. Everything else (userinfo, percent-escapes, spaces,
# non-ASCII, an IPv6 zone) is malformed.
_AUTHORITY_RE = re.compile(
    r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._~-]+))(?::(?P<port>[0-9]{1,5}))?",
    re.ASCII | re.IGNORECASE,
)
_ORIGIN_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/?#]*)", re.ASCII)


class Authority(NamedTuple):
    """A host (lower case; an IPv6 address without its brackets) and a port, if given."""

    host: str
    port: int | None


class Origin(NamedTuple):
    scheme: str
    authority: Authority


def parse_host(value: str) -> Authority | None:
    """The host and port a ``Host`` header names; ``None`` when it is malformed."""
    match = _AUTHORITY_RE.fullmatch(value)
    if match is None:
        return None
    port = None if match["port"] is None else int(match["port"])
    if port is not None and port > 65535:
        return None
    if match["ip6"] is not None:
        try:
            ipaddress.IPv6Address(match["ip6"])
        except ValueError:
            return None
        return Authority(match["ip6"].lower(), port)
    return Authority(match["name"].lower(), port)


def parse_origin(value: str) -> Origin | None:
    """The scheme and authority of an ``Origin`` (``scheme://host[:port]``, as
    browsers serialise it); ``None`` when it is malformed or opaque (``null``)."""
    match = _ORIGIN_RE.fullmatch(value)
    if match is None:
        return None
    authority = parse_host(match["authority"])
    return None if authority is None else Origin(match["scheme"], authority)


def is_web_origin(value: str) -> bool:
    """Whether ``value`` is an ``http`` or ``https`` origin, such as the settings take."""
    origin = parse_origin(value)
    return origin is not None and origin.scheme in ("http", "https")
