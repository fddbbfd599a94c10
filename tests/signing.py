"""Real keys and tokens for the sign-in tests: keys made with ``cryptography``,
tokens signed with PyJWT, and forgeries put together by hand (PyJWT will
not sign them)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

SECRET = "a-secret-of-at-least-32-bytes-for-hs256"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
ALGORITHMS = ("RS256", "ES256", "EdDSA")


def new_key(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    assert algorithm == "EdDSA"
    return ed25519.Ed25519PrivateKey.generate()


@functools.cache
def key(algorithm: str, which: int = 0) -> PrivateKey:
    """A private key for ``algorithm``, the same for the whole run (RSA takes a while)."""
    return new_key(algorithm)


def public_pem(private: PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private: PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_jwk(private: PrivateKey, kid: str) -> dict[str, Any]:
    """The public half as a JWK, as a key server publishes it."""
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims (alice, an hour left), with ``changes``; a None removes a claim.

    Modules sign their tokens as they are imported, before any test runs:
    the hour outlasts a run of the whole suite."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 3600}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], algorithm: str = "HS256", *, kid: str | None = None) -> str:
    """A token PyJWT signs: with SECRET for HS256, else with ``key(algorithm)``."""
    signing_key: Any = SECRET if algorithm == "HS256" else key(algorithm)
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, signing_key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: Any, mac_key: bytes | None) -> str:
    """A token put together by hand: HS256-signed with ``mac_key``, or unsigned."""
    payload_bytes = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload_bytes)}"
    if mac_key is None:
        return signing_input + "."
    mac = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"
