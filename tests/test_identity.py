"""A token's claims as an identity: who, under which name, until when, with
which role in which room; and the claims refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from server.core.errors import InvalidToken
from server.core.identity import GRANTS_MAX, Grant, Identity, Role, identity_from_claims

EXP = 2_000_000_000


def identity(**claims: Any) -> Identity:
    return identity_from_claims({"sub": "alice", "exp": EXP, **claims})


@pytest.mark.parametrize(
    "sub", ["a", "alice", "auth0|5f1c", "user@example.com", "org:42.team_x-1", "U-upper", "x" * 64]
)
def test_a_sub_of_the_allowed_characters_is_the_user_id(sub: str) -> None:
    assert identity(sub=sub).user_id == sub


@pytest.mark.parametrize(
    "sub",
    ["", "x" * 65, "u-3fa2c1", "u-", "al ice", "alice\n", "al/ice", "al\u00efce", "alice\u200b", 7],
)
def test_a_sub_outside_the_rules_is_refused(sub: object) -> None:
    with pytest.raises(InvalidToken, match="sub"):
        identity(sub=sub)


def test_the_name_follows_the_rules_of_display_names() -> None:
    assert identity().name is None
    assert identity(name=None).name is None
    assert identity(name="  Ad\u0061\u0301  Lovelace ").name == "Ad\u00e1 Lovelace"
    for bad in ("", "   ", "x" * 33, "Eve\u202e", "a\u200db", 42, ["Eve"]):
        with pytest.raises(InvalidToken, match="the token's name"):
            identity(name=bad)


def test_exp_iat_and_nbf_are_json_numbers() -> None:
    assert identity(exp=EXP + 0.5, iat=1, nbf=1.5).expires_at == EXP + 0.5
    for claim in ("exp", "iat", "nbf"):
        for bad in ("2000000000", True, None, float("inf"), float("nan"), [1]):
            if claim != "exp" and bad is None:
                continue
            with pytest.raises(InvalidToken, match=claim):
                identity(**{claim: bad})


def test_an_identity_cannot_be_changed() -> None:
    who = identity(rooms={"team-*": "member"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        who.user_id = "mallory"  # type: ignore[misc]
    assert isinstance(who.grants, tuple)
    assert hash(who) == hash(identity(rooms={"team-*": "member"}))


def test_roles_rank_reader_member_moderator() -> None:
    assert Role.READER < Role.MEMBER < Role.MODERATOR
    assert [str(role) for role in Role] == ["reader", "member", "moderator"]
    assert Role.parse("member") is Role.MEMBER
    for bad in ("Member", "admin", "", 2, None):
        with pytest.raises(ValueError, match="role"):
            Role.parse(bad)


def test_a_grant_names_a_room_or_with_a_star_every_room_a_prefix_starts() -> None:
    who = identity(rooms={"support-42": "member", "team-*": "reader", "*": "reader"})
    assert who.role_in("support-42") is Role.MEMBER
    assert who.role_in("support-420") is Role.READER  # only through "*"
    assert who.role_in("team-") is Role.READER
    assert who.role_in("team-a") is Role.READER
    assert identity(rooms={"team-*": "member"}).role_in("team") is None
    assert identity(rooms={"team-*": "member"}).role_in("general") is None
    assert identity().role_in("general") is None


def test_the_most_specific_grant_decides_higher_or_lower() -> None:
    rooms = {
        "*": "moderator",
        "team-*": "member",
        "team-board*": "reader",
        "team-board-open": "moderator",
    }
    who = identity(rooms=rooms)
    assert who.role_in("general") is Role.MODERATOR
    assert who.role_in("team-a") is Role.MEMBER
    assert who.role_in("team-board") is Role.READER  # narrowed below "team-*"
    assert who.role_in("team-boards") is Role.READER
    assert who.role_in("team-board-open") is Role.MODERATOR  # a room's own name wins
    # The order of the claim does not matter.
    assert identity(rooms=dict(reversed(rooms.items()))).grants == who.grants


@pytest.mark.parametrize(
    "rooms",
    [
        ["team-*"],
        "team-*",
        {"Team-*": "member"},
        {"team-**": "member"},
        {"te*m": "member"},
        {"-team*": "member"},
        {"": "member"},
        {"a" * 33: "member"},
        {"a" * 33 + "*": "member"},
        {"team-*": "admin"},
        {"team-*": "Member"},
        {"team-*": 2},
        {"team-*": None},
        {f"room-{i}": "reader" for i in range(GRANTS_MAX + 1)},
    ],
)
def test_malformed_grants_are_refused(rooms: object) -> None:
    with pytest.raises(InvalidToken, match="rooms"):
        identity(rooms=rooms)


def test_as_many_grants_as_allowed_are_taken() -> None:
    who = identity(rooms={f"room-{i}": "reader" for i in range(GRANTS_MAX)})
    assert who.role_in(f"room-{GRANTS_MAX - 1}") is Role.READER
    assert Grant.parse("a" * 32, "member").matches("a" * 32)
    assert Grant.parse("a" * 32 + "*", "member").matches("a" * 32)
