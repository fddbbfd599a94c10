"""The keys of the server API, as a setting: ``"name:secret:scope,scope"`` each.

A key has a name (what its messages are signed with when they name no user:
``server:<name>``), a secret (what a backend sends as ``Authorization:
Bearer <secret>``) and the scopes it grants: ``publish`` (post and
broadcast), ``read`` (rooms, history, presence), ``moderate``
(memberships, disconnects, bans).

A secret is never shown: not in the settings' repr, not in a refusal (which
names the entry by its position, and by its name once that is valid), not
in a log. In the environment the list is comma-separated like any other,
and the scopes' commas are told from the entries' by the colons:
``CHAT_SERVER_API_KEYS=app:SECRET:publish,read,ops:SECRET2:moderate``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator

Scope = Literal["publish", "read", "moderate"]
SCOPES: tuple[str, ...] = get_args(Scope)
SECRET_MIN_CHARS = 32
# A name is part of a user id (``server:<name>``, within a token's ``sub``
# rules) and of Redis keys: nothing that needs escaping.
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,32}")
# What secret generators give (hex, base64, base64url), and no separator.
SECRET_RE = re.compile(r"[A-Za-z0-9._~+/=-]+")
KEYS_MAX = 100


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """One key of the server API; its secret is left out of its repr."""

    name: str
    secret: str = dataclasses.field(repr=False)
    scopes: frozenset[str]

    @property
    def digest(self) -> bytes:
        """The secret's SHA-256: what a request's secret is compared with
        (equal lengths, so the comparison tells nothing of the length)."""
        return hashlib.sha256(self.secret.encode()).digest()

    @property
    def user_id(self) -> str:
        """Who a message of this key's is from when it names no user."""
        return f"server:{self.name}"


def parse_key(entry: Any, index: int) -> ApiKey:
    """One entry of ``server_api_keys``; ValueError saying what is wrong
    without repeating the secret (nor anything that may be it)."""
    where = f"entry {index + 1}"
    if not isinstance(entry, str):
        raise ValueError(f"{where} is not a string")
    name, _, rest = entry.partition(":")
    secret, _, scopes = rest.rpartition(":")
    if not name or not secret or not scopes:
        raise ValueError(f'{where} is not "name:secret:scope,scope"')
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}: the name must be 1-32 of A-Z, a-z, 0-9, '.', '_' and '-'")
    where = f"{where} ({name!r})"
    if len(secret) < SECRET_MIN_CHARS:
        raise ValueError(
            f"{where}: the secret must be at least {SECRET_MIN_CHARS} characters "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))" makes one)'
        )
    if not SECRET_RE.fullmatch(secret):
        raise ValueError(f"{where}: the secret may hold A-Z, a-z, 0-9 and ._~+/=- only")
    granted = [scope.strip() for scope in scopes.split(",")]
    if not granted or any(scope not in SCOPES for scope in granted):
        raise ValueError(f"{where}: scopes are a comma-separated list of {', '.join(SCOPES)}")
    return ApiKey(name, secret, frozenset(granted))


def parse_keys(entries: Any) -> tuple[ApiKey, ...]:
    """Every entry of ``server_api_keys``; ValueError for the first that is wrong,
    or for two keys with one name or one secret."""
    if not isinstance(entries, list | tuple):
        raise ValueError('expected a list of "name:secret:scope,scope"')
    if len(entries) > KEYS_MAX:
        raise ValueError(f"at most {KEYS_MAX} keys")
    keys = tuple(parse_key(entry, index) for index, entry in enumerate(entries))
    names = [key.name for key in keys]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two keys are named {name!r}")
    if len({key.secret for key in keys}) < len(keys):
        raise ValueError("two keys have the same secret")
    return keys


def _rejoined(entries: list[str]) -> list[str]:
    """The environment's comma-separated entries, with each key's scopes
    joined back to it: a part without a colon is the scope of the one before."""
    joined: list[str] = []
    for part in entries:
        if joined and isinstance(part, str) and ":" not in part:
            joined[-1] = f"{joined[-1]},{part}"
        else:
            joined.append(part)
    return joined


def _keys(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        value = _rejoined(list(value))
    keys = parse_keys(value)
    return tuple(f"{key.name}:{key.secret}:{','.join(sorted(key.scopes))}" for key in keys)


# The setting: entries checked, each as "name:secret:scope,scope" (sorted scopes).
ServerApiKeys = Annotated[tuple[str, ...], BeforeValidator(_keys)]
