"""Settings refused before anything starts: flags, environment and config file, in-process.

Each refusal is one line naming what is wrong, which the command line prints
before exiting with 2 (tests/test_processes.py runs it for two of them).
"""

from __future__ import annotations

from typing import Any

import pytest

from server.cli import UsageError, parse_args
from server.config import ConfigError, load


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


def test_address_connections_may_be_as_many_as_address_streams() -> None:
    config = load(parse_args([]), environ={})
    assert (config.address_connections, config.address_streams) == (200, 100)
    environ = {"CHAT_ADDRESS_STREAMS": "300", "CHAT_ADDRESS_CONNECTIONS": "300"}
    assert load(parse_args([]), environ=environ).address_connections == 300
