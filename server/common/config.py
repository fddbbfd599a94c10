"""Settings: every key declared once, with its type, default, bounds and meaning.

Precedence is flags > environment (``CHAT_<KEY>``) > config file > defaults.
Every value is validated here, so a bad setting fails at start with a
one-line message naming the key, never later inside a worker. A new key is
one declaration in :class:`Config` (and its row in the README's table of
config file keys).
"""

from __future__ import annotations

import contextvars
import importlib.util
import logging
import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .api_keys import ServerApiKeys
from .auth_keys import JWKSURL, Anonymous, PublicKeyFile, RoomPrefixes, Secret, check_key_sources
from .settings_sources import ConfigError, ConfigFile, Environment, bounds, describe
from .settings_types import (
    LOG_FORMATS,
    LOG_LEVELS,
    LOOPS,
    LogFormat,
    LogLevel,
    Loop,
    MemorySize,
    Networks,
    OptionalHttpURL,
    OptionalOrigin,
    OptionalRedisURL,
    Origins,
    WebhookEvents,
)

__all__ = [
    "KEYS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOOPS",
    "Config",
    "ConfigError",
    "keep_bound_settings",
    "load",
    "number_range",
]

log = logging.getLogger("chat-server")

# What load() reads besides the flags, highest first: the environment, the config file.
_READING: contextvars.ContextVar[tuple[PydanticBaseSettingsSource, ...]] = contextvars.ContextVar(
    "reading", default=()
)


class Config(BaseSettings):
    """The settings of one server; built by :func:`load`, or directly from values in tests."""

    # Frozen: hashable, and safe to hand to every worker (pickled or forked).
    # Strict: the config file's values are taken only as their own type
    # (``port = "80"`` is refused); the environment's text is read as the
    # key's type first (server.common.settings_sources.Environment).
    model_config = SettingsConfigDict(
        env_prefix="CHAT_", extra="forbid", frozen=True, strict=True, case_sensitive=True
    )

    # Where it listens, how many workers, what they run on.
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(8080, ge=0, le=65535, description="port; 0 picks a free one")
    backlog: int = Field(1024, ge=1, le=65535, description="listen backlog")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, description="worker processes"
    )
    loop: Loop = Field("uvloop", description="event loop of the workers")
    debug: bool = Field(False, description="asyncio debug mode in every worker")
    data_dir: str = Field("./chat-data", description="embedded Redis data, and its session secret")
    # Redis: where (empty: an embedded one in data_dir), its memory, how long to wait at start.
    redis_url: OptionalRedisURL = Field("", description="Redis to use; empty: an embedded one")
    redis_maxmemory: MemorySize = Field("256mb", description="memory limit of the embedded Redis")
    redis_wait_s: float = Field(15.0, ge=0, le=3600, description="how long to wait for Redis")
    # Logs and the operators' ports.
    log_level: LogLevel = Field("info", description="least level logged")
    log_format: LogFormat = Field("text", description="text, or one JSON object a line")
    metrics_token: str = Field("", description="bearer token /metrics needs; empty: none")
    monitor_port: int = Field(
        0, ge=0, le=65535, description="first port of the live console; 0: off"
    )

    # Sessions, cookies and the origins and proxies trusted.
    session_secret: str = Field("", description="signs session cookies; empty: generated once")
    session_max_age_s: int = Field(2592000, ge=60, description="session lifetime")
    cookie_secure: bool = Field(False, description="mark the session cookie Secure")
    allowed_origins: Origins = Field((), description="extra origins allowed to write")
    public_origin: OptionalOrigin = Field("", description="the origin browsers use")
    trusted_proxies: Networks = Field((), description="proxies whose X-Forwarded-* is believed")

    # Sign-in from the application: who may do what without a token, and what verifies one.
    anonymous: Anonymous = Field("write", description="what a visitor without a token may do")
    auth_jwt_secret: Secret = Field(
        "", repr=False, description="HMAC secret of HS256 tokens; empty: none"
    )
    auth_jwt_public_key: PublicKeyFile = Field(
        "", description="PEM public key file of RS256, ES256 or EdDSA tokens; empty: none"
    )
    auth_jwks_url: JWKSURL = Field("", description="JWKS URL of the tokens' keys; empty: none")
    auth_jwt_audience: str = Field("", description="the aud tokens must have; empty: any")
    auth_jwt_issuer: str = Field("", description="the iss tokens must have; empty: any")
    auth_leeway_s: int = Field(30, ge=0, le=600, description="clock skew allowed on exp and nbf")
    private_room_prefixes: RoomPrefixes = Field(
        (), description="rooms starting so admit only users granted them"
    )
    # The server API's keys (server.common.api_keys); none: the API is off.
    server_api_keys: ServerApiKeys = Field(
        (), repr=False, description='keys of the server API, "name:secret:scope,scope" each'
    )

    # What one user may do.
    rate_limit_per_s: float = Field(5.0, ge=0.01, description="messages per user per second")
    rate_limit_burst: int = Field(20, ge=1, description="burst above that rate")
    streams_per_session: int = Field(10, ge=1, le=10_000, description="open streams per session")
    # What one client address may do, however many users it makes.
    address_sessions_per_min: int = Field(
        30, ge=1, description="new sessions per client address per minute"
    )
    address_rate_limit_per_s: float = Field(
        20.0, ge=0.01, description="messages per client address per second"
    )
    address_rate_limit_burst: int = Field(60, ge=1, description="burst above that rate")
    address_streams: int = Field(100, ge=1, description="open streams per client address")
    address_connections: int = Field(
        200, ge=1, description="open connections per client address, in each worker"
    )
    address_rooms_per_min: int = Field(
        10, ge=1, description="new rooms per client address per minute"
    )

    # Messages and rooms.
    message_max_chars: int = Field(2000, ge=1, le=1_000_000, description="longest message")
    body_max_bytes: int = Field(
        65536, ge=256, le=64 * 1024 * 1024, description="largest request body and frame"
    )
    history_len: int = Field(10000, ge=1, le=10_000_000, description="messages kept per room")
    room_ttl_s: int = Field(2592000, ge=1, description="a room silent this long is deleted")
    edit_window_s: int = Field(
        900, ge=0, le=10**9, description="how long an author may edit a message; 0: never"
    )
    presence_list_max: int = Field(
        200, ge=0, le=100_000, description="rooms with more users send counts only"
    )
    # Webhooks: where events are POSTed, what signs them, which, and for how long.
    webhook_url: OptionalHttpURL = Field("", description="where events are POSTed; empty: none")
    webhook_secret: str = Field("", repr=False, description="signs the events POSTed")
    webhook_events: WebhookEvents = Field(
        ("message.created", "message.updated", "message.deleted"),
        description="which events are POSTed",
    )
    webhook_retry_for_s: int = Field(
        86400, ge=1, le=30 * 86400, description="how long an event is retried before it is dead"
    )

    # Connections: pings, timeouts, buffers.
    heartbeat_s: float = Field(15.0, ge=0.05, le=3600, description="heartbeat interval")
    idle_timeout_s: float = Field(
        60.0, ge=0.1, le=86400, description="a connection without progress this long is closed"
    )
    send_buffer_messages: int = Field(
        1000, ge=1, le=1_000_000, description="per-connection buffer before a slow client is cut"
    )
    replays_per_worker: int = Field(
        16, ge=1, le=1024, description="resumes reading and writing a page of history at once"
    )
    request_timeout_s: float = Field(
        10.0, ge=0.1, le=3600, description="a request's headers, then body, arrive within this"
    )
    keepalive_timeout_s: float = Field(
        75.0, ge=0.1, le=86400, description="an idle keep-alive connection is closed after this"
    )
    shutdown_timeout_s: float = Field(
        5.0, ge=0.1, le=600, description="how long a graceful stop may take"
    )

    # Not a key: where the settings came from, so that reloads read the same file again.
    config_file: str = Field("", description="the config file read, if any")

    @property
    def stop_deadline_s(self) -> float:
        """How long a worker may take to stop before it is killed."""
        return self.shutdown_timeout_s * 2 + 2

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: the values given (the flags), then what :func:`load` reads.

        ``Config(...)`` outside :func:`load` takes its values and the defaults only.
        """
        return (init_settings, *_READING.get())


KEYS = frozenset(Config.model_fields) - {"config_file"}


def number_range(key: str) -> tuple[type, float | None, float | None]:
    """The type, least and greatest value of a numeric key (``None``: open)."""
    field = Config.model_fields[key]
    assert field.annotation in (int, float), key
    kind: type = int if field.annotation is int else float
    low, high = bounds(field)
    return kind, low, high


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the settings from flags (already typed, None when absent), env and file."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    config_file = flags.pop("config", None) or environ.get("CHAT_CONFIG", "")
    for key in flags:
        if key not in KEYS:
            raise ConfigError(f"{key}: unknown setting")
    reading: list[PydanticBaseSettingsSource] = [Environment(Config, environ, KEYS)]
    if config_file:
        reading.append(ConfigFile(Config, config_file, KEYS))
    try:
        # Each source alone first, the file first: a bad value is refused
        # even where a higher source overrides it.
        for source in reversed(reading):
            Config(**source())
        token = _READING.set(tuple(reading))
        try:
            config = Config(config_file=config_file, **flags)
        finally:
            _READING.reset(token)
    except ValidationError as exc:
        raise ConfigError(describe(exc, Config.model_fields)) from None
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
    refusal = check_key_sources(config) or _check_webhook(config)
    if refusal:
        raise ConfigError(refusal)
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


def _check_webhook(config: Config) -> str:
    if config.webhook_url and not config.webhook_secret:
        return "webhook_secret: needed with webhook_url (it signs every event)"
    return ""


def keep_bound_settings(old: Config, new: Config) -> Config:
    """Settings that only a restart can change keep their old values, with a warning."""
    kept = {}
    for key in ("host", "port", "redis_url", "data_dir", "session_secret", "redis_maxmemory"):
        if getattr(new, key) != getattr(old, key):
            log.warning("reload: %s changed; it takes effect only after a restart", key)
            kept[key] = getattr(old, key)
    return new.model_copy(update=kept)
