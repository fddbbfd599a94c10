"""The README's table of config file keys and the declared settings agree.

Every key declared in :class:`server.common.config.Config` has one row in the
table "Config file keys" (README.rst, section "Command line"), with the
declared default; a default the README gives in words is named below.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from server.common.config import KEYS, Config

README = pathlib.Path(__file__).resolve().parent.parent / "README.rst"

# Declared defaults that the README says in words: what they mean to an operator.
IN_WORDS = {
    "workers": "number of CPUs",  # a default factory: os.cpu_count()
    "redis_url": "none",  # empty: the embedded Redis
    "session_secret": "generated once",  # empty: generated, kept in data_dir or Redis
    "public_origin": "from ``Host``",  # empty: each request's own
    "metrics_token": "none",  # empty: /metrics is open
    "monitor_port": "0 (off)",
    # Empty: no such key source, or nothing to check.
    "auth_jwt_secret": "none",
    "auth_jwt_public_key": "none",
    "auth_jwks_url": "none",
    "auth_jwt_audience": "none",
    "auth_jwt_issuer": "none",
    # Empty: no webhooks.
    "webhook_url": "none",
    "webhook_secret": "none",
}


def readme_defaults() -> dict[str, str]:
    """Each key of the table, with the text of its default column."""
    text = README.read_text()
    lines = text[text.index("Config file keys (") :].splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)][:3]
    columns = [match.start() for match in re.finditer(r"=+", lines[borders[0]])]
    assert len(borders) == 3 and len(columns) == 3, "the table is not where it was"
    defaults: dict[str, str] = {}
    for line in lines[borders[1] + 1 : borders[2]]:
        cell = line[: columns[1]].strip()
        if not cell:  # the meaning goes on
            continue
        keys = re.findall(r"``(\w+)``", cell)
        assert len(keys) == 1 and keys[0] not in defaults, f"one row per key: {line!r}"
        defaults[keys[0]] = line[columns[2] :].strip()
    return defaults


def as_written(key: str) -> str:
    """The declared default of ``key`` as the README writes it."""
    if key in IN_WORDS:
        return IN_WORDS[key]
    default = Config.model_fields[key].default
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return f"``{default}``"
    if isinstance(default, tuple):
        return f"``{json.dumps(list(default))}``" if default else "[]"
    return str(int(default)) if default == int(default) else str(default)


def test_the_readme_lists_every_key_with_its_declared_default() -> None:
    defaults = readme_defaults()
    assert sorted(set(KEYS) - set(defaults)) == [], "declared, not in the README"
    assert sorted(set(defaults) - set(KEYS)) == [], "in the README, not declared"
    wrong = {
        key: (defaults[key], as_written(key)) for key in KEYS if defaults[key] != as_written(key)
    }
    assert wrong == {}, "README default, declared default"


@pytest.mark.parametrize("key", sorted(IN_WORDS))
def test_only_defaults_that_mean_something_else_are_in_words(key: str) -> None:
    field = Config.model_fields[key]
    assert field.default_factory is not None or field.default in ("", 0)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_says_in_one_line_what_it_is(key: str) -> None:
    description = Config.model_fields[key].description
    assert description and "\n" not in description
