"""The sign-in settings: each refused at start in one line naming its key, and
the combinations that could never let anyone sign in."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from server.common.auth_keys import read_public_key
from server.common.config import ConfigError, load

from .signing import ALGORITHMS, SECRET, key, new_key, private_pem, public_pem


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as refused:
        load({}, environ=env)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("env", "starts"),
    [
        ({"CHAT_AUTH_JWT_SECRET": "x" * 31}, "auth_jwt_secret: must be at least 32 bytes"),
        ({"CHAT_ANONYMOUS": "everyone"}, "anonymous: expected one of write, read, none"),
        ({"CHAT_ANONYMOUS": "none"}, 'anonymous: "none" needs a key'),
        ({"CHAT_PRIVATE_ROOM_PREFIXES": "team-"}, "private_room_prefixes: private rooms need"),
        ({"CHAT_PRIVATE_ROOM_PREFIXES": "Team-"}, "private_room_prefixes: 'Team-' is not"),
        ({"CHAT_PRIVATE_ROOM_PREFIXES": "-x"}, "private_room_prefixes: '-x' is not"),
        ({"CHAT_AUTH_JWKS_URL": "ftp://id.example.com/jwks"}, "auth_jwks_url: 'ftp://"),
        ({"CHAT_AUTH_JWKS_URL": "https:///jwks"}, "auth_jwks_url: "),
        ({"CHAT_AUTH_JWKS_URL": "id.example.com/jwks"}, "auth_jwks_url: "),
        ({"CHAT_AUTH_LEEWAY_S": "601"}, "auth_leeway_s: 601 is out of range [0, 600]"),
        ({"CHAT_AUTH_LEEWAY_S": "-1"}, "auth_leeway_s: -1 is out of range"),
        (
            {"CHAT_AUTH_JWT_SECRET": SECRET, "CHAT_AUTH_JWKS_URL": "https://id.example.com/j"},
            "auth_jwks_url: only one of auth_jwt_secret, auth_jwt_public_key, auth_jwks_url",
        ),
    ],
)
def test_bad_sign_in_settings_are_refused_in_one_line(env: dict[str, str], starts: str) -> None:
    assert refusal(env).startswith(starts)


def test_good_sign_in_settings_are_taken(tmp_path: Path) -> None:
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    config = load({}, environ={"CHAT_AUTH_JWT_SECRET": "\u00e9" * 16})
    assert (config.anonymous, config.auth_leeway_s, config.private_room_prefixes) == (
        "write",
        30,
        (),
    )
    path = tmp_path / "chat.toml"
    path.write_text(
        'anonymous = "none"\nauth_jwks_url = "https://id.example.com/.well-known/jwks.json"\n'
        'private_room_prefixes = ["team-", "support-"]\nauth_leeway_s = 0\n'
    )
    config = load({"config": str(path)}, environ={"CHAT_ANONYMOUS": "read"})
    assert config.anonymous == "read"
    assert config.private_room_prefixes == ("team-", "support-")
    assert config.auth_leeway_s == 0
    # The secret stays out of the settings' repr, which a log line might show.
    assert SECRET not in repr(load({}, environ={"CHAT_AUTH_JWT_SECRET": SECRET}))


def test_the_server_refuses_a_pem_file_it_cannot_use(tmp_path: Path) -> None:
    def refused(content: bytes | None, name: str = "key.pem") -> str:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        return refusal({"CHAT_AUTH_JWT_PUBLIC_KEY": str(path)})

    assert "cannot read" in refused(None, "missing.pem")
    assert "cannot read" in refusal({"CHAT_AUTH_JWT_PUBLIC_KEY": str(tmp_path)})  # a directory
    assert "not a PEM public key" in refused(b"hello")
    assert "not a PEM public key" in refused(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END")
    assert "private key" in refused(private_pem(key("RS256")))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "at least 2048 bits" in refused(public_pem(weak))
    assert "RSA, EC P-256 or Ed25519" in refused(
        public_pem(ec.generate_private_key(ec.SECP384R1()))
    )
    assert "RSA, EC P-256 or Ed25519" in refused(public_pem(ed448.Ed448PrivateKey.generate()))
    for message in (refused(b"x"), refused(None, "gone.pem")):
        assert message.startswith("auth_jwt_public_key: ")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_pem_key_or_certificate_says_its_algorithm(algorithm: str, tmp_path: Path) -> None:
    private = new_key(algorithm)
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(private))
    assert read_public_key(str(path))[1] == algorithm
    assert load({}, environ={"CHAT_AUTH_JWT_PUBLIC_KEY": str(path)}).auth_jwt_public_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, None if algorithm == "EdDSA" else hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    assert read_public_key(str(path))[1] == algorithm
