"""Who a sign-in token says its bearer is: the user, a display name, until when,
and the role the user has in which rooms.

A token's signature and times are checked at the edge (:mod:`server.web.tokens`);
here its verified claims become an :class:`Identity`, or :class:`InvalidToken`
when they break the rules. Roles rank ``reader < member < moderator``; a
grant names one room, or with a trailing ``*`` every room whose name starts
with what comes before it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .errors import BadRequest, InvalidToken
from .model import ROOM_RE
from .names import clean_name

# A user id from a token: what applications use as ids (emails, UUIDs,
# "auth0|abc", "org:42"), and nothing that needs escaping anywhere.
SUB_RE = re.compile(r"[A-Za-z0-9._@:|-]{1,64}")
# Anonymous users' ids start so (server.web.sessions): a token may not take one.
ANONYMOUS_PREFIX = "u-"
ANONYMOUS_ID_RE = re.compile(r"u-[0-9a-f]{1,64}")
USER_ID_RULE = "1-64 of A-Z, a-z, 0-9 and ._@:|-"
# A grant's pattern: a room name, or the start of one (possibly empty) and "*".
PREFIX_RE = re.compile(r"(?:[a-z0-9][a-z0-9_-]{0,31})?\*")
GRANTS_MAX = 100


def user_id(value: Any, what: str = "'user_id'") -> str:
    """A user id: a sign-in token's ``sub``, or an anonymous user's ``u-...``;
    BadRequest naming ``what`` otherwise."""
    if not isinstance(value, str) or not (
        SUB_RE.fullmatch(value) or ANONYMOUS_ID_RE.fullmatch(value)
    ):
        raise BadRequest(f"{what} must be a user id: {USER_ID_RULE}")
    return value


class Role(enum.IntEnum):
    """What a user may do in a room; a higher role may do all a lower one may."""

    READER = 1  # history, live messages, presence
    MEMBER = 2  # + post, edit and delete its own messages, typing
    MODERATOR = 3  # + delete any message

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> Role:
        """The role named ``reader``, ``member`` or ``moderator``; ValueError otherwise."""
        if isinstance(value, str) and value in _ROLES:
            return _ROLES[value]
        raise ValueError(f"a role is one of {', '.join(_ROLES)}, not {value!r}")


_ROLES = {str(role): role for role in Role}


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """A role in one room (``support-42``) or in every room a prefix starts (``team-*``)."""

    pattern: str
    role: Role

    @classmethod
    def parse(cls, pattern: object, role: object) -> Grant:
        """A grant from a pattern and a role's name; ValueError saying what is wrong."""
        if not isinstance(pattern, str) or not (
            ROOM_RE.fullmatch(pattern) or PREFIX_RE.fullmatch(pattern)
        ):
            raise ValueError(
                f"{pattern!r} is neither a room name nor the start of one followed by *"
            )
        return cls(pattern, Role.parse(role))

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith("*")

    def matches(self, room: str) -> bool:
        if self.is_prefix:
            return room.startswith(self.pattern[:-1])
        return room == self.pattern

    @property
    def specificity(self) -> tuple[bool, int]:
        """Higher for a grant that says more: a room's own name above any
        prefix, and a longer prefix above a shorter one."""
        return (not self.is_prefix, len(self.pattern))


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A user signed in with a token: its id, its name if the token gave one,
    when the token expires (seconds since the epoch), and its grants."""

    user_id: str
    name: str | None
    expires_at: float
    # Most specific first (Grant.specificity); built by identity_from_claims.
    grants: tuple[Grant, ...] = ()

    def role_in(self, room: str) -> Role | None:
        """The role a grant gives in ``room``, or None when no grant names it.

        The most specific grant that matches decides, whether it gives more
        or less than a broader one: ``{"team-*": "member", "team-board":
        "reader"}`` makes a reader in ``team-board`` and a member in every
        other ``team-`` room.
        """
        for grant in self.grants:
            if grant.matches(room):
                return grant.role
        return None


class Expiry:
    """When a signed-in connection's sign-in ends (Unix time), whether its
    client was told it soon would, and how to learn of a newer one kept
    elsewhere (a session refreshed by another request), if there is a way."""

    __slots__ = ("at", "renew", "renewing", "session", "warned")

    def __init__(
        self,
        at: float,
        renew: Callable[[], Awaitable[float | None]] | None = None,
        session: str | None = None,
    ) -> None:
        self.at = at
        self.renew = renew
        self.session = session  # the tag of the browser session signed in, if any
        self.renewing = False
        self.warned = False

    def extend(self, at: float) -> None:
        """A newer token came: the sign-in now ends at ``at``."""
        if at > self.at:
            self.at, self.warned = at, False


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The identity that verified claims describe; InvalidToken saying which
    claim breaks which rule.

    ``sub`` (1-64 of ``A-Za-z0-9._@:|-``, not starting with ``u-``) and
    ``exp`` are required; ``name`` follows the rules of display names;
    ``rooms`` maps patterns to roles. ``iat`` and ``nbf``, when present,
    are numbers (their times are checked with the signature).
    """
    sub = claims.get("sub")
    if not isinstance(sub, str) or not SUB_RE.fullmatch(sub):
        raise InvalidToken("the token's sub must be 1-64 characters of A-Za-z0-9._@:|-")
    if sub.startswith(ANONYMOUS_PREFIX):
        raise InvalidToken(f"the token's sub must not start with {ANONYMOUS_PREFIX!r}")
    for claim in ("exp", "iat", "nbf"):
        if claim in claims or claim == "exp":
            _check_time(claim, claims.get(claim))
    name = None
    if claims.get("name") is not None:
        try:
            name = clean_name(claims["name"])
        except BadRequest as exc:
            raise InvalidToken(f"the token's {exc.message}") from None
    return Identity(sub, name, float(claims["exp"]), parse_grants(claims.get("rooms")))


def parse_grants(rooms: object) -> tuple[Grant, ...]:
    """The ``rooms`` claim as grants, most specific first; InvalidToken if malformed."""
    if rooms is None:
        return ()
    if not isinstance(rooms, Mapping):
        raise InvalidToken('the token\'s rooms must be an object like {"team-*": "member"}')
    if len(rooms) > GRANTS_MAX:
        raise InvalidToken(f"the token's rooms may name at most {GRANTS_MAX} patterns")
    try:
        grants = [Grant.parse(pattern, role) for pattern, role in rooms.items()]
    except ValueError as exc:
        raise InvalidToken(f"the token's rooms: {exc}") from None
    return tuple(sorted(grants, key=lambda grant: grant.specificity, reverse=True))


def _check_time(claim: str, value: object) -> None:
    # JSON numbers only: PyJWT would also take "123" or true as a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"the token's {claim} must be a number of seconds since the epoch")
