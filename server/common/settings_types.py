"""The kinds of setting that are more than a number, a flag or free text.

Each is a type to annotate a key of :class:`server.common.config.Config` with: a
choice of names in any case, a Redis memory size, an origin, a Redis URL, a
list of origins or of networks. A validator here raises ``ValueError`` with
the end of the one-line refusal; the key is put in front of it
(:func:`server.common.settings_sources.describe`).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator

from . import redisurl
from .hosts import is_web_origin


def _any_case(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.lower()


# Names of levels, loops and formats are taken in any case, as in the flags.
AnyCase = BeforeValidator(_any_case)
LogLevelName = Literal["debug", "info", "warning", "error", "critical"]
LoopName = Literal["uvloop", "asyncio"]
LogFormatName = Literal["text", "json"]
LogLevel = Annotated[LogLevelName, AnyCase]
Loop = Annotated[LoopName, AnyCase]
LogFormat = Annotated[LogFormatName, AnyCase]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevelName)
LOOPS: tuple[str, ...] = get_args(LoopName)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormatName)

_MEMORY_RE = re.compile(r"([0-9]{1,19})(kb|mb|gb)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
MEMORY_MIN = 1024**2  # Redis itself warns about less than this


def _memory(value: Any) -> str:
    match = _MEMORY_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected a size like "256mb" (kb, mb or gb), got {value!r}')
    size = int(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "").lower()]
    if not MEMORY_MIN <= size < 2**63:
        raise ValueError(f"{value!r} is out of range [1mb, 2**63 bytes)")
    return match.group(0).lower()


# A Redis memory size as Redis reads it: bytes, or a number with kb, mb or gb.
MemorySize = Annotated[str, BeforeValidator(_memory)]

_ORIGIN = "an origin like https://chat.example.com"


def _origin(value: str) -> str:
    if value and not is_web_origin(value):
        raise ValueError(f"{value!r} is not {_ORIGIN}")
    return value


def _redis_url(value: str) -> str:
    if value:
        redisurl.validate(value)  # raises BadRedisURL, a ValueError
    return value


# Empty, or an origin that the workers can parse.
OptionalOrigin = Annotated[str, AfterValidator(_origin)]
# Empty, or a Redis URL this server can use.
OptionalRedisURL = Annotated[str, AfterValidator(_redis_url)]


def _is_network(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


def _list_of(what: str, check: Callable[[str], bool]) -> BeforeValidator:
    """A list of strings (in the environment, comma-separated), each checked."""

    def validate(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list, got {value!r}")
        for item in value:
            if not check(item):
                raise ValueError(f"{item!r} is not {what}")
        return tuple(value)

    return BeforeValidator(validate)


Origins = Annotated[tuple[str, ...], _list_of(_ORIGIN, is_web_origin)]
Networks = Annotated[
    tuple[str, ...], _list_of("an address or network like 10.0.0.0/8", _is_network)
]

# The events a webhook may be sent (server.core.webhook).
WEBHOOK_EVENTS = (
    "message.created",
    "message.updated",
    "message.deleted",
    "user.joined",
    "user.left",
)
WebhookEvents = Annotated[
    tuple[str, ...],
    _list_of("an event (" + ", ".join(WEBHOOK_EVENTS) + ")", WEBHOOK_EVENTS.__contains__),
]


def _http_url(value: str) -> str:
    if value:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
            raise ValueError(f"{value!r} is not an http(s) URL")
    return value


# Empty, or an http(s) URL.
OptionalHttpURL = Annotated[str, AfterValidator(_http_url)]
