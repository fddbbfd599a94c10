"""Where settings come from besides the flags, and how a refusal reads.

:class:`Environment` reads ``CHAT_<KEY>`` from a given mapping, each value
as its key's type; :class:`ConfigFile` reads the flat TOML config file.
Both are pydantic-settings sources, ordered by
:meth:`server.common.config.Config.settings_customise_sources`. :func:`describe`
turns pydantic's first validation error into the one line that names the
key (``port: 70000 is out of range [0, 65535]``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

from annotated_types import Ge, Le
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


_WORDS = {"1": True, "true": True, "yes": True, "on": True}
_WORDS |= {"0": False, "false": False, "no": False, "off": False, "": False}


def from_text(kind: Any, text: str) -> Any:
    """An environment variable's text as a value of type ``kind``.

    Text that does not read as one is passed on as it is, for validation
    to refuse in the words it uses for any source.
    """
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        return text
    if kind is bool:
        return _WORDS.get(text.strip().lower(), text)
    if get_origin(kind) is tuple:  # a list: comma-separated
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


class Environment(EnvSettingsSource):
    """``CHAT_<KEY>`` (exactly so, the key in upper case) from ``environ``."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str], keys: Collection[str]
    ) -> None:
        super().__init__(settings_cls, case_sensitive=True)
        prefix = self.env_prefix
        self.env_vars = {
            prefix + key: environ[prefix + key.upper()]
            for key in keys
            if prefix + key.upper() in environ
        }

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        return None if value is None else from_text(field.annotation, value)


class ConfigFile(TomlConfigSettingsSource):
    """The TOML config file: flat, and every key in it a known one.

    A file that cannot be read or parsed is an error, as is a missing one.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: str, keys: Collection[str]):
        self.path = path
        self.keys = keys
        super().__init__(settings_cls, toml_file=path)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        # Read the one file even if it is not there, to say so.
        return self._read_file(Path(self.path))

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            raw = super()._read_file(file_path)
        except OSError as exc:
            raise ConfigError(f"config file {self.path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {self.path}: invalid TOML: {exc}") from None
        for key, value in raw.items():
            if key not in self.keys:
                raise ConfigError(f"{key}: unknown key in {self.path}")
            if isinstance(value, dict):
                raise ConfigError(f"{key}: tables are not allowed; the config file is flat")
        return raw


def bounds(field: FieldInfo) -> tuple[Any, Any]:
    """The least and the greatest value a numeric key takes (``None``: open)."""
    low = next((m.ge for m in field.metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    return low, high


_EXPECTED = {
    "int_type": "int",
    "float_type": "float",
    "bool_type": "true or false",
    "string_type": "a string",
}


def describe(exc: ValidationError, fields: Mapping[str, FieldInfo]) -> str:  # noqa: PLR0911
    """The first error as one line that starts with the key (a line per kind of error)."""
    error = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in error["loc"])
    kind, value = error["type"], error["input"]
    field = fields.get(key)
    if kind == "extra_forbidden":
        return f"{key}: unknown setting"
    if field is None:
        return f"{key}: {error['msg']}"
    if kind == "value_error":
        return f"{key}: {error['ctx']['error']}"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {value!r}"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = bounds(field)
        return f"{key}: {value!r} is out of range [{low}, {high or 'inf'}]"
    if kind == "literal_error":
        return f"{key}: expected one of {', '.join(get_args(field.annotation))}, got {value!r}"
    if kind == "string_too_short":
        return f"{key}: must not be empty"
    return f"{key}: {error['msg']}"
