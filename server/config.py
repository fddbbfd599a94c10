"""Settings: one frozen dataclass, read from a TOML file, the environment and flags.

Precedence is flags > environment (``CHAT_<KEY>``) > config file > defaults.
Every value is validated here, so a bad setting fails at start with a
one-line message naming the key, never later inside a worker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from . import redisurl

log = logging.getLogger("chat-server")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOOPS = ("uvloop", "asyncio")
LOG_FORMATS = ("text", "json")
_ORIGIN_RE = re.compile(r"^https?://[^/\s]+$")
_MEMORY_RE = re.compile(r"([0-9]{1,19})(kb|mb|gb)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
MEMORY_MIN = 1024**2  # Redis itself warns about less than this


_CHOICES = {"log_level": LOG_LEVELS, "loop": LOOPS, "log_format": LOG_FORMATS}


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


@dataclasses.dataclass(frozen=True)
class Config:
    # Where it listens, how many workers, what they run on.
    host: str = "127.0.0.1"
    port: int = 8080
    backlog: int = 1024
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    loop: str = "uvloop"
    debug: bool = False
    data_dir: str = "./chat-data"
    # Redis: where (empty: an embedded one in data_dir), its memory, how long to wait at start.
    redis_url: str = ""
    redis_maxmemory: str = "256mb"
    redis_wait_s: float = 15.0
    # Logs and the operators' ports.
    log_level: str = "info"
    log_format: str = "text"
    metrics_token: str = ""
    monitor_port: int = 0

    # Sessions, cookies and the origins and proxies trusted.
    session_secret: str = ""
    session_max_age_s: int = 2592000
    cookie_secure: bool = False
    allowed_origins: tuple[str, ...] = ()
    public_origin: str = ""
    trusted_proxies: tuple[str, ...] = ()

    # What one user may do.
    rate_limit_per_s: float = 5.0
    rate_limit_burst: int = 20
    streams_per_session: int = 10
    # What one client address may do, however many users it makes.
    address_sessions_per_min: int = 30
    address_rate_limit_per_s: float = 20.0
    address_rate_limit_burst: int = 60
    address_streams: int = 100
    address_connections: int = 200  # in each worker; trusted proxies are not counted
    address_rooms_per_min: int = 10

    # Messages and rooms.
    message_max_chars: int = 2000
    body_max_bytes: int = 65536
    history_len: int = 10000
    room_ttl_s: int = 2592000
    presence_list_max: int = 200
    # Connections: pings, timeouts, buffers.
    heartbeat_s: float = 15.0
    idle_timeout_s: float = 60.0
    send_buffer_messages: int = 1000
    request_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    shutdown_timeout_s: float = 5.0

    # Where the settings came from: reloads read the same file again.
    config_file: str = ""

    @property
    def stop_deadline_s(self) -> float:
        """How long a worker may take to stop before it is killed."""
        return self.shutdown_timeout_s * 2 + 2


# key -> (type, minimum, maximum); None bounds are open.
_NUMBERS: dict[str, tuple[type, float | None, float | None]] = {
    "port": (int, 0, 65535),
    "workers": (int, 1, 256),
    "session_max_age_s": (int, 60, None),
    "message_max_chars": (int, 1, 1_000_000),
    "body_max_bytes": (int, 256, 64 * 1024 * 1024),
    "rate_limit_per_s": (float, 0.01, None),
    "rate_limit_burst": (int, 1, None),
    "streams_per_session": (int, 1, 10_000),
    "history_len": (int, 1, 10_000_000),
    "room_ttl_s": (int, 1, None),
    "heartbeat_s": (float, 0.05, 3600),
    "idle_timeout_s": (float, 0.1, 86400),
    "send_buffer_messages": (int, 1, 1_000_000),
    "presence_list_max": (int, 0, 100_000),
    "address_sessions_per_min": (int, 1, None),
    "address_rate_limit_per_s": (float, 0.01, None),
    "address_rate_limit_burst": (int, 1, None),
    "address_streams": (int, 1, None),
    "address_connections": (int, 1, None),
    "address_rooms_per_min": (int, 1, None),
    "backlog": (int, 1, 65535),
    "monitor_port": (int, 0, 65535),
    "request_timeout_s": (float, 0.1, 3600),
    "keepalive_timeout_s": (float, 0.1, 86400),
    "shutdown_timeout_s": (float, 0.1, 600),
    "redis_wait_s": (float, 0, 3600),
}
# (And log_level, log_format and loop: one of their choices.)
_STRINGS = frozenset(
    (*_CHOICES, "host", "redis_url", "data_dir", "session_secret", "public_origin", "metrics_token")
)
_BOOLS = ("debug", "cookie_secure")
KEYS = frozenset(f.name for f in dataclasses.fields(Config)) - {"config_file"}


def _is_origin(item: str) -> bool:
    return bool(_ORIGIN_RE.match(item))


def _is_network(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


# key -> (what each item is, a check of one item)
_LISTS = {
    "allowed_origins": ("an origin like https://chat.example.com", _is_origin),
    "trusted_proxies": ("an address or network like 10.0.0.0/8", _is_network),
}


def _coerce_list(key: str, value: Any, *, from_env: bool) -> tuple[str, ...]:
    """A list of strings (comma-separated in the environment), each checked."""
    what, check = _LISTS[key]
    if from_env:
        value = [item.strip() for item in str(value).split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    for item in value:
        if not check(item):
            raise ConfigError(f"{key}: {item!r} is not {what}")
    return tuple(value)


def _coerce(key: str, value: Any, *, from_env: bool) -> Any:  # noqa: PLR0911  (a branch per kind)
    """Turn one raw value (TOML-typed, or a string from the environment) into its type."""
    if key in _NUMBERS:
        kind, low, high = _NUMBERS[key]
        if from_env:
            try:
                value = kind(value)
            except ValueError:
                raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{key}: {value!r} is out of range [{low}, {high or 'inf'}]")
        return kind(value)
    if key in _BOOLS:
        if from_env:
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if key in _LISTS:
        return _coerce_list(key, value, from_env=from_env)
    if key == "redis_maxmemory":
        return _memory(key, value)
    assert key in _STRINGS, key
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if key in _CHOICES:  # (in any case)
        value = value.lower()
        if value not in _CHOICES[key]:
            raise ConfigError(f"{key}: expected one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key == "public_origin" and value and not _ORIGIN_RE.match(value):
        raise ConfigError(f"{key}: {value!r} is not an origin like https://chat.example.com")
    if key == "host" and not value:
        raise ConfigError(f"{key}: must not be empty")
    if key == "redis_url" and value:
        try:
            redisurl.validate(value)
        except redisurl.BadRedisURL as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return value


def _memory(key: str, value: Any) -> str:
    """A Redis memory size as Redis reads it: bytes, or a number with kb, mb or gb."""
    match = _MEMORY_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f'{key}: expected a size like "256mb" (kb, mb or gb), got {value!r}')
    size = int(match.group(1)) * _MEMORY_UNITS[(match.group(2) or "").lower()]
    if not MEMORY_MIN <= size < 2**63:
        raise ConfigError(f"{key}: {value!r} is out of range [1mb, 2**63 bytes)")
    return match.group(0).lower()


def read_file(path: str) -> dict[str, Any]:
    """Read the TOML config file; unknown keys are an error."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    for key, value in raw.items():
        if key not in KEYS:
            raise ConfigError(f"{key}: unknown key in {path}")
        if isinstance(value, dict):
            raise ConfigError(f"{key}: tables are not allowed; the config file is flat")
    return raw


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the settings from flags (already typed, None when absent), env and file."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    config_file = flags.pop("config", None) or environ.get("CHAT_CONFIG", "")
    values: dict[str, Any] = {}
    if config_file:
        for key, value in read_file(config_file).items():
            values[key] = _coerce(key, value, from_env=False)
    for key in sorted(KEYS):
        env_value = environ.get("CHAT_" + key.upper())
        if env_value is not None:
            values[key] = _coerce(key, env_value, from_env=True)
    for key, value in flags.items():
        if key not in KEYS:
            raise ConfigError(f"{key}: unknown setting")
        values[key] = _coerce(key, value, from_env=False)
    config = Config(config_file=config_file, **values)
    if config.idle_timeout_s <= config.heartbeat_s:
        raise ConfigError(
            f"idle_timeout_s: {config.idle_timeout_s:g} must be longer than "
            f"heartbeat_s ({config.heartbeat_s:g})"
        )
    if config.address_connections < config.address_streams:
        raise ConfigError(
            f"address_connections: {config.address_connections} is below address_streams "
            f"({config.address_streams}): a stream is a connection, and one worker may hold all"
        )
    if config.monitor_port:
        if config.monitor_port + 3 * config.workers > 65536:
            raise ConfigError(
                f"monitor_port: {config.monitor_port} leaves no room for 3 ports per worker"
            )
        if importlib.util.find_spec("aiomonitor") is None:
            raise ConfigError(
                "monitor_port: the live console needs aiomonitor "
                "(pip install 'chat-server[monitor]')"
            )
    return config


def keep_bound_settings(old: Config, new: Config) -> Config:
    """Settings that only a restart can change keep their old values, with a warning."""
    kept = {}
    for key in ("host", "port", "redis_url", "data_dir", "session_secret", "redis_maxmemory"):
        if getattr(new, key) != getattr(old, key):
            log.warning("reload: %s changed; it takes effect only after a restart", key)
            kept[key] = getattr(old, key)
    return dataclasses.replace(new, **kept)
