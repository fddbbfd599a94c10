"""Settings refused before anything starts: flags, environment and config file, in-process.

Each refusal is one line naming what is wrong, which the command line prints
before exiting with 2 (tests/test_processes.py runs it for two of them).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

from server.common.config import Config, ConfigError, load
from server.process.cli import UsageError, parse_args


@pytest.mark.parametrize(
    ("args", "env", "config", "needle"),
    [
        (["--workers", "0"], {}, None, "workers"),
        (["--workers", "many"], {}, None, "--workers"),
        (["--port", "70000"], {}, None, "port"),
        (["--loop", "trio"], {}, None, "--loop"),
        (["--bogus"], {}, None, "--bogus"),
        ([], {"CHAT_PORT": "eighty"}, None, "port"),
        ([], {"CHAT_HEARTBEAT_S": "0"}, None, "heartbeat_s"),
        ([], {"CHAT_REDIS_URL": "http://x"}, None, "redis_url"),
        ([], {}, "colour = 'blue'\n", "colour"),
        ([], {}, "message_max_chars = 'long'\n", "message_max_chars"),
        ([], {}, "rate_limit_burst = -1\n", "rate_limit_burst"),
        ([], {}, "allowed_origins = 'x'\n", "allowed_origins"),
        # Origins that the workers could not parse.
        ([], {"CHAT_PUBLIC_ORIGIN": "http://["}, None, "public_origin"),
        ([], {"CHAT_PUBLIC_ORIGIN": "https://chat.example.com:99999"}, None, "public_origin"),
        ([], {}, "allowed_origins = ['https://[::1']\n", "allowed_origins"),
        ([], {}, "allowed_origins = ['https://a:x']\n", "allowed_origins"),
        ([], {}, "this is not toml\n", "invalid TOML"),
        # Every stream is a connection, and one worker may hold all of an address's.
        ([], {"CHAT_ADDRESS_STREAMS": "300"}, None, "address_connections"),
        ([], {"CHAT_ADDRESS_CONNECTIONS": "0"}, None, "address_connections"),
    ],
)
def test_bad_flags_env_or_config_are_refused_in_one_line(
    tmp_path: Any, args: list[str], env: dict[str, str], config: str | None, needle: str
) -> None:
    if config is not None:
        path = tmp_path / "chat.toml"
        path.write_text(config)
        args = [*args, "--config", str(path)]
    with pytest.raises((UsageError, ConfigError)) as refused:
        load(parse_args(args), environ=env)
    message = str(refused.value)
    assert needle in message
    assert "\n" not in message.strip()


def test_good_flags_env_and_config_are_taken_flags_first(tmp_path: Any) -> None:
    path = tmp_path / "chat.toml"
    path.write_text("workers = 3\nheartbeat_s = 2.5\nport = 9000\n")
    config = load(
        parse_args(["--port", "8000", "--config", str(path)]),
        environ={"CHAT_HEARTBEAT_S": "1.5", "CHAT_WORKERS": "4"},
    )
    assert (config.port, config.workers, config.heartbeat_s) == (8000, 4, 1.5)
    # Names of levels, formats and loops in any case, as in the environment.
    flags = parse_args(["--log-level", "INFO", "--log-format", "Json", "--loop", "UVLOOP"])
    config = load(flags, environ={})
    assert (config.log_level, config.log_format, config.loop) == ("info", "json", "uvloop")
    environ = {"CHAT_LOG_LEVEL": "Debug", "CHAT_LOG_FORMAT": "JSON", "CHAT_LOOP": "AsyncIO"}
    config = load(parse_args([]), environ=environ)
    assert (config.log_level, config.log_format, config.loop) == ("debug", "json", "asyncio")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHAT_PORT": " 8000 "}, {"port": 8000}),
        ({"CHAT_HEARTBEAT_S": "1e0"}, {"heartbeat_s": 1.0}),
        ({"CHAT_DEBUG": "yes", "CHAT_COOKIE_SECURE": "On"}, {"debug": True, "cookie_secure": True}),
        ({"CHAT_DEBUG": "", "CHAT_COOKIE_SECURE": "0"}, {"debug": False, "cookie_secure": False}),
        # Lists are comma-separated in the environment.
        (
            {"CHAT_TRUSTED_PROXIES": "10.0.0.0/8, ::1,"},
            {"trusted_proxies": ("10.0.0.0/8", "::1")},
        ),
        ({"CHAT_ALLOWED_ORIGINS": ""}, {"allowed_origins": ()}),
        ({"CHAT_REDIS_MAXMEMORY": "2GB"}, {"redis_maxmemory": "2gb"}),
        # Only CHAT_<KEY>, the key in upper case; other names are not settings.
        ({"CHAT_port": "1", "chat_port": "2", "CHAT_COLOUR": "blue"}, {"port": 8080}),
        ({"CHAT_CONFIG_FILE": "/nonexistent"}, {"config_file": ""}),
    ],
)
def test_the_environment_is_read_as_each_keys_type(
    env: dict[str, str], expected: dict[str, Any]
) -> None:
    config = load(environ=env)
    assert {key: getattr(config, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHAT_DEBUG": "maybe"}, "debug: expected true or false, got 'maybe'"),
        ({"CHAT_ALLOWED_ORIGINS": '["https://a.example"]'}, "allowed_origins: '[\"https:"),
        ({"CHAT_PORT": "80.0"}, "port: expected int, got '80.0'"),
        # Not a number at all: no timer can run on it.
        ({"CHAT_HEARTBEAT_S": "nan"}, "heartbeat_s: nan is out of range [0.05, 3600]"),
        ({"CHAT_RATE_LIMIT_PER_S": "nan"}, "rate_limit_per_s: nan is out of range [0.01, inf]"),
    ],
)
def test_the_environment_is_refused_in_the_keys_words(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(environ=env)
    assert str(refused.value).startswith(needle)


def test_a_bad_value_is_refused_even_where_a_higher_source_overrides_it(tmp_path: Any) -> None:
    path = tmp_path / "chat.toml"
    path.write_text("port = 'eighty'\n")
    environ = {"CHAT_CONFIG": str(path), "CHAT_PORT": "80"}
    with pytest.raises(ConfigError, match=r"^port: expected int, got 'eighty'$"):
        load(environ=environ)
    with pytest.raises(ConfigError, match=r"^port: expected int, got 'eighty'$"):
        load({"port": 80}, environ=environ)
    with pytest.raises(ConfigError, match=r"^workers: 0 is out of range \[1, 256\]$"):
        load({"workers": 2}, environ={"CHAT_WORKERS": "0"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 80.0\n", "port: expected int, got 80.0"),
        ("debug = 'true'\n", "debug: expected true or false, got 'true'"),
        ("log_level = 3\n", "log_level: expected a string, got 3"),
        ("log_level = 'loud'\n", "log_level: expected one of debug, info, warning, error, "),
        ("host = ''\n", "host: must not be empty"),
        ("redis_maxmemory = 1048576\n", 'redis_maxmemory: expected a size like "256mb"'),
        ("trusted_proxies = ['10.0.0.0/33']\n", "trusted_proxies: '10.0.0.0/33' is not an "),
        ("heartbeat_s = nan\n", "heartbeat_s: nan is out of range [0.05, 3600]"),
        ("[server]\nport = 1\n", "server: unknown key in "),
        ("config_file = 'x'\n", "config_file: unknown key in "),
        ("PORT = 1\n", "PORT: unknown key in "),
    ],
)
def test_the_config_file_is_refused_in_the_keys_words(
    tmp_path: Any, text: str, message: str
) -> None:
    path = tmp_path / "chat.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load({"config": str(path)}, environ={})
    assert str(refused.value).startswith(message)


def test_a_missing_config_file_is_refused(tmp_path: Any) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=r": No such file or directory$"):
        load({"config": str(missing)}, environ={})
    with pytest.raises(ConfigError, match=r": Is a directory$"):
        load(environ={"CHAT_CONFIG": str(tmp_path)})


def test_settings_are_frozen_picklable_hashable_and_built_directly_without_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHAT_PORT", "1234")
    config = Config(workers=2, heartbeat_s=1.0)
    assert (config.port, config.workers, config.stop_deadline_s) == (8080, 2, 12.0)
    assert load(environ={}).workers == (os.cpu_count() or 1)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and hash(copy) == hash(config)
    with pytest.raises((AttributeError, TypeError, ValueError)):
        config.port = 1  # type: ignore[misc]


def test_address_connections_may_be_as_many_as_address_streams() -> None:
    config = load(parse_args([]), environ={})
    assert (config.address_connections, config.address_streams) == (200, 100)
    environ = {"CHAT_ADDRESS_STREAMS": "300", "CHAT_ADDRESS_CONNECTIONS": "300"}
    assert load(parse_args([]), environ=environ).address_connections == 300
