"""``chat-server token``: a sign-in token for development and tests.

Signed with the configured ``auth_jwt_secret`` (HS256), read as the server
reads it: from the environment or the config file (``--config``), never
from a flag, which anyone on the machine could see in the process list.
The token carries the configured ``aud`` and ``iss``, so the server takes
it; its claims follow the rules the server checks
(:func:`server.core.identity.identity_from_claims`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from ..common.auth_keys import HMAC_ALGORITHM
from ..common.config import ConfigError, load
from ..core.errors import InvalidToken
from ..core.identity import Grant, identity_from_claims

EXIT_USAGE = 2
_TTL_RE = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
TTL_MAX_S = 366 * 86400


class _Refused(Exception):
    """Bad arguments or settings: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Refused(message)


def ttl(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``1h``, ``7d`` as seconds (1 s to 366 days)."""
    match = _TTL_RE.fullmatch(text.strip())
    seconds = int(match[1]) * _UNITS[match[2]] if match else 0
    if not 1 <= seconds <= TTL_MAX_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h or 7d")
    return seconds


def grant(text: str) -> tuple[str, str]:
    """``PATTERN:ROLE``, e.g. ``team-*:member``."""
    pattern, _, role = text.rpartition(":")
    try:
        parsed = Grant.parse(pattern, role)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return parsed.pattern, str(parsed.role)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(
        prog="chat-server token",
        description="Print a sign-in token signed with the configured auth_jwt_secret.",
    )
    parser.add_argument("--sub", required=True, help="the user id (1-64 of A-Za-z0-9._@:|-)")
    parser.add_argument("--name", help="the display name [none: the user keeps theirs]")
    parser.add_argument("--ttl", type=ttl, default=3600, help="lifetime: 90s, 30m, 1h, 7d [1h]")
    parser.add_argument(
        "--room",
        type=grant,
        action="append",
        default=[],
        metavar="PATTERN:ROLE",
        help="a grant, e.g. 'team-*:member' (reader, member, moderator); repeatable",
    )
    parser.add_argument("--config", help="TOML config file (as the server's)")
    return parser.parse_args(argv)


def make_token(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The token the arguments ask for; _Refused or ConfigError saying why not."""
    args = parse_args(argv)
    config = load({"config": args.config}, environ)
    if not config.auth_jwt_secret:
        raise _Refused("auth_jwt_secret is not set: a development token is signed with it")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.sub, "iat": now, "exp": now + args.ttl}
    if args.name is not None:
        claims["name"] = args.name
    if args.room:
        claims["rooms"] = dict(args.room)
    if config.auth_jwt_audience:
        claims["aud"] = config.auth_jwt_audience
    if config.auth_jwt_issuer:
        claims["iss"] = config.auth_jwt_issuer
    try:
        identity = identity_from_claims(claims)
    except InvalidToken as exc:
        raise _Refused(exc.message.replace("the token's ", "--")) from None
    if identity.name is not None:
        claims["name"] = identity.name
    return jwt.encode(claims, config.auth_jwt_secret, algorithm=HMAC_ALGORITHM)


def main(argv: Sequence[str]) -> int:
    try:
        token = make_token(argv)
    except (_Refused, ConfigError) as exc:
        print(f"chat-server token: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return 0
