"""The document's components: the schemas of bodies, events and frames, the
parameters and the security schemes, each built from the constants the
handlers check against (room names, ids, limits), so that the two agree."""

from __future__ import annotations

from typing import Any

from ...common.config import Config
from ...core.identity import SUB_RE, Role
from ...core.model import ROOM_RE
from ...store.session_store import COOKIE_NAME
from ..history import HISTORY_LIMIT_MAX
from ..message_input import IDEMPOTENCY_KEY_RE
from ..sessions import USER_ID_RE
from ..views import ONLINE_LIMIT_MAX

Schema = dict[str, Any]

ID_PATTERN = "^[0-9]{1,20}-[0-9]{1,20}$"  # a Redis stream id, as server.core.ids parses it
ROLES = [role.name.lower() for role in Role]
BROADCAST_ROOMS_MAX = 100
SERVER_SCOPES = ("publish", "read", "moderate")


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object with these properties (more may come in later versions)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


STRING: Schema = {"type": "string"}
NUMBER: Schema = {"type": "number"}
COUNT: Schema = {"type": "integer", "minimum": 0}
ROOM: Schema = {"type": "string", "pattern": f"^{ROOM_RE.pattern}$"}
MESSAGE_ID: Schema = {"type": "string", "pattern": ID_PATTERN}
# Anonymous ids (``u-`` + hex) and the ``sub`` of sign-in tokens.
USER_ID: Schema = {
    "type": "string",
    "anyOf": [{"pattern": f"^{USER_ID_RE.pattern}$"}, {"pattern": f"^{SUB_RE.pattern}$"}],
}
ONLINE: Schema = {"type": "array", "items": ref("OnlineUser")}


def frame(
    kind: str, required: dict[str, Schema], optional: dict[str, Schema] | None = None
) -> Schema:
    """A WebSocket frame: a JSON object whose ``type`` says what it is."""
    return obj({"type": {"const": kind}, **required}, optional)


def schemas(config: Config) -> dict[str, Schema]:
    text = {"type": "string", "minLength": 1, "maxLength": config.message_max_chars}
    name = {"type": "string", "minLength": 1, "maxLength": 32}
    ref_field = {"type": ["string", "number", "null"], "description": "echoed in the answer"}
    error = ref("ErrorDetail")
    return {
        "ErrorDetail": obj(
            {"code": STRING, "message": STRING},
            {"retry_after": {"type": "string", "description": "WebSocket error frames only"}},
        ),
        "Error": obj({"error": error}),
        "Message": {
            **obj(
                {
                    "id": MESSAGE_ID,
                    "room": ROOM,
                    "user_id": STRING,
                    "name": STRING,
                    "text": STRING,
                    "ts": {**NUMBER, "description": "Unix time, seconds"},
                },
                {"edited": {**NUMBER, "description": "when it was last edited (Unix time)"}},
            ),
            "description": "Ids grow within a room: drop a message whose id was seen already.",
        },
        "MessageEnvelope": obj({"message": ref("Message")}),
        "Messages": obj({"messages": {"type": "array", "items": ref("Message")}}),
        "OnlineUser": obj({"user_id": STRING, "name": STRING}),
        "OnlinePage": obj({"online": ONLINE, "count": COUNT}),
        "Session": obj(
            {
                "user_id": STRING,
                "name": STRING,
                "signed_in": {"type": "boolean"},
                "expires_at": {"type": ["number", "null"]},
                "can_rename": {"type": "boolean"},
            },
            {
                "role": {
                    "type": ["string", "null"],
                    "enum": [*ROLES, None],
                    "description": "with `?room=` only: the caller's role in that room; "
                    "null in a private room it has no access to",
                }
            },
        ),
        "SessionName": obj({"user_id": STRING, "name": STRING}),
        "NewName": obj({"name": name}),
        "NewMessage": obj({"text": text}),
        "NewMessageForm": obj({"text": text}),
        "Edit": obj({"text": text}),
        "SignInToken": obj({"token": STRING}),
        "SignedIn": obj({"user_id": STRING, "name": STRING, "expires_at": NUMBER}),
        "Health": obj({"status": {"const": "ok"}, "worker": COUNT, "pid": COUNT}, {"loop": STRING}),
        # What streams carry (SSE ``data:`` lines, and WebSocket frames).
        "Presence": obj({"count": COUNT}, {"online": ONLINE}),
        "PresenceDiff": obj({"joined": ONLINE, "left": ONLINE, "count": COUNT}),
        "Gap": obj({"first_id": MESSAGE_ID}),
        "AuthExpiring": obj({"expires_at": NUMBER}),
        "Disconnected": obj({"reason": STRING, "reconnect": {"type": "boolean"}}),
        "MessageDeleted": obj({"id": MESSAGE_ID}),
        "Typing": obj({"user_id": STRING, "name": STRING}),
        "TypingRequest": {"type": "object"},
        "ClientFrame": {
            "oneOf": [
                frame("message", {"text": text}, {"ref": ref_field, "key": idempotency_key()}),
                frame("auth", {"token": STRING}, {"ref": ref_field}),
                frame("typing", {}, {"ref": ref_field}),
            ]
        },
        "ServerFrame": {
            "oneOf": [
                frame("message", {"message": ref("Message")}),
                frame("message_updated", {"message": ref("Message")}),
                frame("message_deleted", {"id": MESSAGE_ID}),
                frame("presence", {"count": COUNT}, {"online": ONLINE}),
                frame("presence_diff", {"joined": ONLINE, "left": ONLINE, "count": COUNT}),
                frame("typing", {"user_id": STRING, "name": STRING}),
                frame("gap", {"first_id": MESSAGE_ID}),
                frame("auth_expiring", {"expires_at": NUMBER}),
                frame("ack", {"ref": ref_field, "message": ref("Message")}),
                frame("auth", {"ref": ref_field, "expires_at": NUMBER}),
                frame("error", {"ref": ref_field, "error": error}),
            ]
        },
        # The server API (section 6b of the specification).
        "ServerMessage": obj({"text": text}, {"user_id": USER_ID, "name": name}),
        "Broadcast": obj(
            {
                "rooms": {
                    "type": "array",
                    "items": ROOM,
                    "minItems": 1,
                    "maxItems": BROADCAST_ROOMS_MAX,
                },
                "text": text,
            },
            {"user_id": USER_ID, "name": name},
        ),
        "BroadcastResults": obj(
            {
                "results": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            obj({"room": ROOM, "message": ref("Message")}),
                            obj({"room": STRING, "error": error}),
                        ]
                    },
                }
            }
        ),
        "RoomSummary": obj(
            {"room": ROOM, "last_id": {"type": ["string", "null"]}, "online": COUNT}
        ),
        "RoomList": obj(
            {
                "rooms": {"type": "array", "items": ref("RoomSummary")},
                "cursor": {
                    "type": ["string", "null"],
                    "description": "give it as `cursor` for the next page; null on the last",
                },
            }
        ),
        "Room": obj(
            {
                "room": ROOM,
                "private": {"type": "boolean"},
                "last_id": {"type": ["string", "null"]},
                "length": COUNT,
                "online": COUNT,
            }
        ),
        "Membership": obj({"role": {"type": "string", "enum": ROLES}}),
        "Disconnect": obj({"reconnect": {"type": "boolean"}}),
        "Ban": obj(
            {},
            {
                "for_s": {**NUMBER, "exclusiveMinimum": 0, "description": "none: until lifted"},
                "rooms": {"type": "array", "items": ROOM, "description": "none: everywhere"},
                "reason": STRING,
            },
        ),
    }


def idempotency_key() -> Schema:
    return {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_RE.pattern}$"}


def _param(where: str, name: str, schema: Schema, description: str, **more: Any) -> Schema:
    return {"name": name, "in": where, "schema": schema, "description": description, **more}


def _limit(default: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}


PARAMETERS: dict[str, Schema] = {
    "room": _param("path", "room", ROOM, "a room name (other names: 404)", required=True),
    "id": _param("path", "id", MESSAGE_ID, "a message id", required=True),
    "user_id": _param("path", "user_id", USER_ID, "a user id", required=True),
    "limit": _param("query", "limit", _limit(50, HISTORY_LIMIT_MAX), "messages in the page"),
    "before": _param("query", "before", MESSAGE_ID, "only messages older than this id"),
    "after": _param("query", "after", MESSAGE_ID, "only messages newer than this id"),
    "online_limit": _param("query", "limit", _limit(100, ONLINE_LIMIT_MAX), "users in the page"),
    "online_after": _param(
        "query", "after", USER_ID, "the last user id of the previous page (users come in id order)"
    ),
    "session_room": _param(
        "query", "room", ROOM, "also say the caller's role in this room (`role`)"
    ),
    "since": _param("query", "since", MESSAGE_ID, "replay what came after this message id"),
    "last_event_id": _param(
        "query", "last_event_id", MESSAGE_ID, "as the Last-Event-ID header (which wins)"
    ),
    "Last-Event-ID": _param(
        "header", "Last-Event-ID", MESSAGE_ID, "replay what came after this message id"
    ),
    "Idempotency-Key": _param(
        "header",
        "Idempotency-Key",
        idempotency_key(),
        "the same key from the same caller within 10 minutes answers the first message "
        "(header `Idempotent-Replayed: true`) and stores nothing",
    ),
    "prefix": _param("query", "prefix", STRING, "only rooms whose name starts so"),
    "cursor": _param("query", "cursor", STRING, "the `cursor` of the previous page"),
    "rooms_limit": _param(
        "query", "limit", {"type": "integer", "minimum": 1, "default": 100}, "rooms in the page"
    ),
}

SECURITY_SCHEMES: dict[str, Schema] = {
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE_NAME,
        "description": "The browser's session (opaque, HttpOnly, SameSite=Lax). Created by "
        "the first request that needs one; `POST /api/auth` signs it in.",
    },
    "signIn": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The application's sign-in token, on any `/api/` request (streams "
        "included): no cookie, no session. Bad: 401 `invalid_token`; expired: "
        "401 `token_expired`. Never in the query string.",
    },
    "serverKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "A server API key's secret (`server_api_keys`). Each operation needs "
        f"one scope of {', '.join(SERVER_SCOPES)}: a key without it is refused 403 `scope`; "
        "a missing or wrong key 401 `unauthorized`. With no key configured, every "
        "/server/v1/ path answers 404.",
    },
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`metrics_token`, when one is configured.",
    },
}
