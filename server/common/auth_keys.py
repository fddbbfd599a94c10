"""The keys that verify sign-in tokens, as settings: an HMAC secret, a PEM
public key file, or a JWKS URL; and reading the PEM file.

Each is a type to annotate a key of :class:`server.common.config.Config` with
(as in :mod:`server.common.settings_types`). The algorithm a token must be
signed with follows from the key alone, never from the token:
:func:`read_public_key` says which.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Annotated, Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import AfterValidator, BeforeValidator

if TYPE_CHECKING:
    from .config import Config

# What a visitor without a token may do.
Anonymous = Literal["write", "read", "none"]
# The key sources, one of which verifies tokens (server.common.config.load).
KEY_SOURCES = ("auth_jwt_secret", "auth_jwt_public_key", "auth_jwks_url")

HMAC_ALGORITHM = "HS256"
# RFC 7518 3.2: an HS256 key as long as the hash; shorter ones can be guessed offline.
SECRET_MIN_BYTES = 32
RSA_MIN_BITS = 2048  # NIST SP 800-131A; PyJWT refuses shorter ones too

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def _secret(value: str) -> str:
    if value and len(value.encode()) < SECRET_MIN_BYTES:
        raise ValueError(
            f"must be at least {SECRET_MIN_BYTES} bytes "
            '(python -c "import secrets; print(secrets.token_urlsafe(32))" makes one)'
        )
    return value


def read_public_key(path: str) -> tuple[PublicKey, str]:
    """The public key in a PEM file (a key, or an X.509 certificate's) and the
    algorithm it verifies: RSA (2048 bits or more) RS256, EC P-256 ES256,
    Ed25519 EdDSA. ValueError saying what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            pem = f.read(1024 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if b"PRIVATE KEY-----" in pem:
        raise ValueError(f"{path} holds a private key; give the public key only")
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            key = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = load_pem_public_key(pem)
    except ValueError:
        raise ValueError(f"{path} is not a PEM public key or certificate") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise ValueError(f"{path}: an RSA key needs at least {RSA_MIN_BITS} bits")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "EdDSA"
    raise ValueError(f"{path}: the key must be RSA, EC P-256 or Ed25519")


def _public_key_file(value: str) -> str:
    if value:
        read_public_key(value)
    return value


def _jwks_url(value: str) -> str:
    if not value:
        return value
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


# Room names are [a-z0-9][a-z0-9_-]{0,31} (server.core.model.ROOM_RE): a
# prefix that none starts with would leave a private room open.
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _prefixes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list, got {value!r}")
    for item in value:
        if not (1 <= len(item) <= 32 and item[0] not in "_-" and _PREFIX_CHARS.issuperset(item)):
            raise ValueError(f"{item!r} is not the start of a room name (a-z, 0-9, _ and -)")
    return tuple(value)


# Empty, or a secret long enough for HS256.
Secret = Annotated[str, AfterValidator(_secret)]
# Empty, or a readable PEM file with a public key of a supported kind.
PublicKeyFile = Annotated[str, AfterValidator(_public_key_file)]
# Empty, or an http(s) URL.
JWKSURL = Annotated[str, AfterValidator(_jwks_url)]
RoomPrefixes = Annotated[tuple[str, ...], BeforeValidator(_prefixes)]


def check_key_sources(settings: Config) -> str:
    """What is wrong with the sign-in settings taken together, as the one line
    to refuse them with, or ``""``: at most one key source, and one at all
    wherever someone must sign in."""
    given = [key for key in KEY_SOURCES if getattr(settings, key)]
    if len(given) > 1:
        return f"{given[1]}: only one of {', '.join(KEY_SOURCES)} may be set ({given[0]} is)"
    if given:
        return ""
    needs = "set one of " + ", ".join(KEY_SOURCES)
    if settings.anonymous == "none":
        return (
            f'anonymous: "none" needs a key to verify sign-in tokens ({needs}): '
            "nobody could sign in"
        )
    if settings.private_room_prefixes:
        return (
            f"private_room_prefixes: private rooms need a key to verify sign-in tokens "
            f"({needs}): nobody could enter them"
        )
    return ""
