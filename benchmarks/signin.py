"""The ``chat-signed`` target's users: a sign-in token for every stream and every sender.

Each stream signs in as its own user (``bench-<n>``), as each anonymous stream
of the ``chat`` target is its own visitor, so that the two differ only in how
a client proves who it is: a session cookie made on first contact, or
``Authorization: Bearer <token>`` (no cookie, no session). Each publishing
sender posts with a token of its own (``bench-sender-<i>``). The tokens are
HS256, made with PyJWT, all before the target is measured: making them costs
the server nothing, and the load generator nothing while it measures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import jwt

# The server's auth_jwt_secret (at least 32 bytes) and the tokens' algorithm.
SECRET = "chat-benchmark-hs256-secret-not-for-production"
ALGORITHM = "HS256"
# Longer than any run: a stream whose token expires is ended by the server.
TOKEN_TTL_S = 6 * 3600
USER_PREFIX = "bench-"


def subscriber_user(n: int) -> str:
    return f"{USER_PREFIX}{n}"


def sender_user(i: int) -> str:
    return f"{USER_PREFIX}sender-{i}"


def token(user_id: str, name: str, now: int) -> str:
    claims = {"sub": user_id, "name": name, "iat": now, "exp": now + TOKEN_TTL_S}
    return jwt.encode(claims, SECRET, algorithm=ALGORITHM)


def subscriber_tokens(n: int) -> tuple[str, ...]:
    """The tokens of streams 0 to n - 1, each its own user."""
    now = int(time.time())
    return tuple(token(subscriber_user(i), f"Bench {i}", now) for i in range(n))


def sender_credentials(n: int) -> list[tuple[str, str]]:
    """(user id, token) of senders 0 to n - 1."""
    now = int(time.time())
    users = [sender_user(i) for i in range(n)]
    return [(user, token(user, f"Bench sender {i}", now)) for i, user in enumerate(users)]


async def online_users(base_url: str, room: str, credential: tuple[str, str]) -> dict[str, Any]:
    """Whom the chat server lists online in ``room``: how many users, and how many
    of the first page (up to 1000, in user id order) are the streams' token users.
    Asked with a sender's token, so that asking makes no session."""
    headers = {"Authorization": f"Bearer {credential[1]}"}
    async with (
        aiohttp.ClientSession(
            base_url, headers=headers, cookie_jar=aiohttp.DummyCookieJar()
        ) as session,
        session.get(f"/api/rooms/{room}/online", params={"limit": "1000"}) as resp,
    ):
        if resp.status != 200:
            return {"online_users_error": f"HTTP {resp.status}"}
        body = await resp.json()
    listed: Sequence[dict[str, str]] = body["online"]
    return {
        "online_users": body["count"],
        "online_users_listed": len(listed),
        "listed_with_token_ids": sum(
            1 for user in listed if is_token_user(user["user_id"], user["name"])
        ),
    }


def is_token_user(user_id: str, name: str) -> bool:
    """Whether a user is one of the streams' token users, with its token's name."""
    number = user_id.removeprefix(USER_PREFIX)
    return user_id.startswith(USER_PREFIX) and number.isdigit() and name == f"Bench {number}"
