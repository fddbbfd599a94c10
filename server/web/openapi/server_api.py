"""The server API (section 6b of the specification), for the application's
backends, as the document describes it."""

from __future__ import annotations

from ...common.config import Config
from .operations import answer, errors, json_content, operation
from .schemas import Schema, ref

TAG = "server API"
OFF = (
    "no such room or user, or no server API key is configured (then every /server/v1/ "
    "path answers 404, as an unknown path does)"
)
KEY = {401: "no key, or a wrong one (`unauthorized`)"}
ROOM = {404: OFF}
JSON_BODY = {400: "not a JSON object, or a field of the wrong type or value"}
NOT_JSON = {415: "a body that is not JSON"}


def _op(
    operation_id: str,
    summary: str,
    scope: str,
    *,
    ok: dict[int, Schema],
    errors_: dict[int, str] | None = None,
    parameters: tuple[str, ...] = (),
    body: str | None = None,
    description: str | None = None,
) -> Schema:
    own = errors(
        KEY,
        {403: f"the key lacks the `{scope}` scope (`scope`)"},
        ROOM,
        JSON_BODY if body else {},
        NOT_JSON if body else {},
        errors_ or {},
    )
    return operation(
        operation_id,
        summary,
        tag=TAG,
        ok=ok,
        errors_=own,
        parameters=parameters,
        body=json_content(ref(body)) if body else None,
        security=[{"serverKey": [scope]}],
        description=description,
    )


def server_paths(config: Config) -> dict[str, dict[str, Schema]]:
    too_long = {413: f"`text` over {config.message_max_chars} characters (`too_large`)"}
    room = ("room",)
    member = ("room", "user_id")
    user = ("user_id",)
    return {
        "/server/v1/rooms/{room}/messages": {
            "post": _op(
                "serverPostMessage",
                "Post a message as a user (or as `server:<key name>`)",
                "publish",
                parameters=("room", "Idempotency-Key"),
                body="ServerMessage",
                ok={
                    201: answer(
                        "the message stored (or the first, for a repeated key)",
                        ref("MessageEnvelope"),
                    )
                },
                errors_=errors(
                    too_long,
                    {409: "the Idempotency-Key is being used for a message to another room"},
                ),
            ),
            "get": _op(
                "serverGetMessages",
                "A page of the room's history, oldest first",
                "read",
                parameters=("room", "limit", "before", "after"),
                ok={200: answer("the page", ref("Messages"))},
                errors_={400: "a bad `limit`, `before` or `after`"},
            ),
        },
        "/server/v1/broadcast": {
            "post": _op(
                "serverBroadcast",
                "Post one message to up to 100 rooms",
                "publish",
                body="Broadcast",
                description="Each room succeeds or fails on its own: its result has either "
                "the message or the error.",
                ok={200: answer("a result per room, in the order given", ref("BroadcastResults"))},
                errors_=errors({400: "no rooms, or more than 100"}, too_long),
            )
        },
        "/server/v1/rooms": {
            "get": _op(
                "serverListRooms",
                "The rooms with history, by name, a page at a time",
                "read",
                parameters=("prefix", "cursor", "rooms_limit"),
                ok={200: answer("a page of rooms", ref("RoomList"))},
                errors_={400: "a bad `prefix`, `limit` or `cursor`"},
            )
        },
        "/server/v1/rooms/{room}": {
            "get": _op(
                "serverGetRoom",
                "A room: whether it is private, its last id, length and online count",
                "read",
                parameters=room,
                ok={200: answer("the room", ref("Room"))},
            )
        },
        "/server/v1/rooms/{room}/online": {
            "get": _op(
                "serverGetOnline",
                "A page of the room's online users, in user id order",
                "read",
                parameters=("room", "online_limit", "online_after"),
                ok={200: answer("the page, and how many are online", ref("OnlinePage"))},
                errors_={400: "a bad `limit` or `after`"},
            )
        },
        "/server/v1/rooms/{room}/messages/{id}": {
            "delete": _op(
                "serverDeleteMessage",
                "Delete a message",
                "moderate",
                parameters=("room", "id"),
                ok={204: answer("deleted")},
                errors_=errors({400: "a malformed id"}, {404: "no such message"}),
            )
        },
        "/server/v1/rooms/{room}/members/{user_id}": {
            "put": _op(
                "serverGrantRole",
                "Give a user a role in the room (in a private room: membership)",
                "moderate",
                parameters=member,
                body="Membership",
                ok={204: answer("granted")},
            ),
            "delete": _op(
                "serverRevokeRole",
                "Take the user's role in the room; its streams there end",
                "moderate",
                parameters=member,
                ok={204: answer("revoked")},
            ),
        },
        "/server/v1/users/{user_id}/disconnect": {
            "post": _op(
                "serverDisconnect",
                "End every stream of the user, everywhere, within a second",
                "moderate",
                parameters=user,
                body="Disconnect",
                description="SSE streams get `event: disconnected`; WebSockets close with "
                "4000 when the client may reconnect, 4403 when not.",
                ok={202: answer("accepted: the streams are being ended")},
            )
        },
        "/server/v1/users/{user_id}/ban": {
            "put": _op(
                "serverBan",
                "Ban the user (everywhere, or in some rooms), until lifted or for `for_s`",
                "moderate",
                parameters=user,
                body="Ban",
                description="The user's streams end; its posts, streams and sign-ins are "
                "refused 403 `banned` until the ban ends.",
                ok={204: answer("banned")},
            ),
            "delete": _op(
                "serverUnban",
                "Lift the user's ban",
                "moderate",
                parameters=user,
                ok={204: answer("lifted")},
            ),
        },
    }
