"""The caller's rooms (``GET /api/rooms``) and read positions (``PUT
/api/rooms/{room}/read``), as the document describes them."""

from __future__ import annotations

from ...store.read_marks import ROOMS_MAX, UNREAD_MAX
from .browser import API, CALLER, ROOM_404
from .operations import CROSS_SITE, SIGN_IN, answer, errors, json_content, operation
from .schemas import COUNT, MESSAGE_ID, ROOM, Schema, obj, ref

READ_MARKS = {429: "the user's or the address's budget of read marks is spent (`rate_limited`)"}


def rooms_schemas() -> dict[str, Schema]:
    unread = {
        "oneOf": [{**COUNT, "maximum": UNREAD_MAX}, {"const": f"{UNREAD_MAX}+"}],
        "description": f"messages by others after the read position; past {UNREAD_MAX}: "
        f'"{UNREAD_MAX}+"',
    }
    last = {"oneOf": [ref("Message"), {"type": "null"}], "description": "with its latest text"}
    return {
        "MyRoom": obj({"room": ROOM, "last_message": last, "unread": unread}),
        "MyRooms": obj({"rooms": {"type": "array", "items": ref("MyRoom"), "maxItems": ROOMS_MAX}}),
        "ReadMark": obj({"id": MESSAGE_ID}),
        "ReadPosition": obj({"room": ROOM, "read": MESSAGE_ID}),
    }


def rooms_paths() -> dict[str, dict[str, Schema]]:
    return {
        "/api/rooms": {
            "get": operation(
                "getMyRooms",
                "The caller's rooms (posted in or read), the most recently active first",
                tag=API,
                description=f"At most {ROOMS_MAX}. A room's activity is its newest message, "
                "or the caller's own last read or post there, whichever is later. Private "
                "rooms the caller lost access to, and rooms whose history is gone, are left "
                "out. A caller without a session gets an empty list (and no session).",
                ok={200: answer("the rooms", ref("MyRooms"))},
                errors_=errors(SIGN_IN),
                security=CALLER,
            )
        },
        "/api/rooms/{room}/read": {
            "put": operation(
                "markRead",
                "The caller has read the room up to this message; never moves back",
                tag=API,
                description="An id past the room's newest entry is taken as that entry; "
                "an id older than the kept position changes nothing. Either way the answer "
                "is the position kept.",
                parameters=["room"],
                ok={200: answer("the position kept", ref("ReadPosition"))},
                errors_=errors(
                    {400: "not a JSON object with a message id as `id`"},
                    SIGN_IN,
                    CROSS_SITE,
                    errors(ROOM_404, {404: "a room without messages"}),
                    {415: "a body that is not JSON"},
                    errors(READ_MARKS, {429: "too many new sessions from this address"}),
                ),
                body=json_content(ref("ReadMark")),
                security=CALLER,
            )
        },
    }
