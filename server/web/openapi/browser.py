"""The browser API (section 6 of the specification) and its streams, as the
document describes them."""

from __future__ import annotations

from ...common.config import Config
from ...core.close_reason import CloseReason
from ..transports.ws import CLOSE_CODES
from .operations import CROSS_SITE, SIGN_IN, answer, errors, json_content, operation
from .schemas import Schema, ref

API = "browser API"
# A session cookie, a sign-in token, or neither (``anonymous`` decides what that may do).
CALLER: list[dict[str, list[str]]] = [{"session": []}, {"signIn": []}, {}]

ROOM_404 = {404: "an invalid room name, or a private room the caller has no access to"}
RATE = {429: "the user's or the address's message budget is spent (`rate_limited`)"}
SESSIONS = {429: "too many new sessions from this address (`rate_limited`)"}
MAY_POST = {
    403: "the caller may not post here (`forbidden`: a reader, or anonymous where "
    '`anonymous = "read"`) or is banned (`banned`)'
}
STREAMS = {429: "the session or the address holds as many streams as it may (`too_many_streams`)"}

SSE_EVENTS = """\
Server-Sent Events (`text/event-stream`), one JSON object per `data:` line:

- `message` (`id:` the message id): a Message.
- `message_updated` (`id:` the entry id): the whole Message, with `edited`.
- `message_deleted` (`id:` the entry id): `{"id"}` (MessageDeleted).
- `presence`: the snapshot on subscribe (Presence; `online` left out in rooms over
  `presence_list_max`), then `presence_diff` (PresenceDiff) for each change.
- `typing`: `{"user_id", "name"}` (Typing), another user is typing: at most one per user
  per 2 s, none in rooms over `presence_list_max`; no `id:`, never replayed.
- `gap`: `{"first_id"}` (Gap), before a replay when history no longer holds everything
  after the resume id.
- `auth_expiring`: `{"expires_at"}` (AuthExpiring), 60 s before a sign-in ends.
- `auth_expired`, `signed_out`: `{}`, and the stream ends.
- `disconnected`: `{"reason", "reconnect"}` (Disconnected), ended by the application.
- `reconnect`: the server stops or reloads; `data:` the reason, `retry:` when to come back.

Comment lines (`: ping`) keep the connection alive. Resume with `Last-Event-ID` (or
`?last_event_id=`): what came after that id is replayed from history, then live events
follow, with no gap and no duplicate."""

_CLOSE = ", ".join(
    f"{int(code)} ({reason})" for reason, code in CLOSE_CODES.items() if reason != CloseReason.IDLE
)
WS_FRAMES = f"""\
A WebSocket: a GET with `Upgrade: websocket` is answered 101 and the connection then
carries JSON text frames (ClientFrame from the client, ServerFrame from the server).

The server sends `message`, `message_updated`, `message_deleted`, `presence`,
`presence_diff`, `typing`, `gap` and `auth_expiring` frames, as the SSE events of those
names.
The client sends `{{"type": "message", "text", "ref"?, "key"?}}` (`key`: an idempotency
key) and gets `{{"type": "ack", "ref", "message"}}` or `{{"type": "error", "ref",
"error"}}`; `{{"type": "typing", "ref"?}}` tells the others the caller is typing (no
answer; an error frame when refused); `{{"type": "auth", "token"}}` refreshes a
sign-in (`{{"type": "auth", "ref", "expires_at"}}`). Invalid JSON or an unknown type:
an error frame, the connection stays open. Binary frames close it with 1003, frames
over `body_max_bytes` with 1009.
Close codes: 1001 (shutdown, idle), {_CLOSE}. `?since=ID` resumes as `Last-Event-ID`
does for SSE. A request that is not an upgrade is answered 400."""


def browser_paths(config: Config) -> dict[str, dict[str, Schema]]:
    text = {**json_content(ref("NewMessage")), **form(ref("NewMessageForm"))}
    return {
        "/api/session": {
            "get": operation(
                "getSession",
                "Who the caller is; creates a session when there is none",
                tag=API,
                parameters=["session_room"],
                ok={200: answer("the caller (its role in `room`, when given)", ref("Session"))},
                errors_=errors({400: "`room` is not a room name"}, SIGN_IN, SESSIONS),
                security=CALLER,
            ),
            "put": operation(
                "putSession",
                "Set the caller's display name (1-32 characters after trimming)",
                tag=API,
                ok={200: answer("the caller, renamed", ref("SessionName"))},
                errors_=errors(
                    {400: "not a JSON object, or a bad name (control characters, ...)"},
                    SIGN_IN,
                    errors(CROSS_SITE, {403: "the name comes from the sign-in token"}),
                    {429: "too many renames, or new sessions from this address (`rate_limited`)"},
                ),
                body=json_content(ref("NewName")),
                security=CALLER,
            ),
        },
        "/api/rooms/{room}/messages": {
            "get": operation(
                "getMessages",
                "A page of the room's history, oldest first",
                tag=API,
                parameters=["room", "limit", "before"],
                ok={200: answer("the page (empty for a room never used)", ref("Messages"))},
                errors_=errors({400: "a bad `limit` or `before`"}, SIGN_IN, ROOM_404),
                security=CALLER,
            ),
            "post": operation(
                "postMessage",
                "Post a message; answered once Redis has stored it",
                tag=API,
                parameters=["room", "Idempotency-Key"],
                ok={
                    201: answer(
                        "the message stored (or, for a repeated Idempotency-Key, the first)",
                        ref("MessageEnvelope"),
                        Idempotent_Replayed={
                            "description": "`true` when the message was stored before",
                            "schema": {"type": "string", "const": "true"},
                        },
                    )
                },
                errors_=errors(
                    {400: "malformed JSON or form, missing or empty `text`, a bad key"},
                    SIGN_IN,
                    errors(CROSS_SITE, MAY_POST),
                    ROOM_404,
                    {409: "the Idempotency-Key is being used for a message to another room"},
                    {413: f"`text` over {config.message_max_chars} characters (`too_large`)"},
                    {415: "a body that is neither JSON nor a form"},
                    errors(RATE, SESSIONS),
                ),
                body=text,
                security=CALLER,
            ),
        },
        "/api/rooms/{room}/messages/{id}": {
            "patch": operation(
                "editMessage",
                "Edit one's own message, within `edit_window_s`",
                tag=API,
                parameters=["room", "id"],
                ok={200: answer("the message, with `edited`", ref("MessageEnvelope"))},
                errors_=errors(
                    {400: "a malformed id, or a bad `text`"},
                    SIGN_IN,
                    errors(
                        CROSS_SITE,
                        {403: "not the author, past the edit window (`edit_window`), banned"},
                    ),
                    errors(ROOM_404, {404: "no such message (or it was deleted)"}),
                    {413: "`text` over the limit (`too_large`)"},
                    {415: "a body that is not JSON"},
                    RATE,
                ),
                body=json_content(ref("Edit")),
                security=CALLER,
            ),
            "delete": operation(
                "deleteMessage",
                "Delete a message: one's own, or any as a moderator of the room",
                tag=API,
                parameters=["room", "id"],
                ok={204: answer("deleted")},
                errors_=errors(
                    {400: "a malformed id"},
                    SIGN_IN,
                    errors(CROSS_SITE, {403: "neither the author nor a moderator, or banned"}),
                    errors(ROOM_404, {404: "no such message (or it was deleted)"}),
                    RATE,
                ),
                security=CALLER,
            ),
        },
        "/api/rooms/{room}/online": {
            "get": operation(
                "getOnline",
                "A page of the room's online users, in user id order",
                tag=API,
                parameters=["room", "online_limit", "online_after"],
                ok={200: answer("the page, and how many are online", ref("OnlinePage"))},
                errors_=errors({400: "a bad `limit` or `after`"}, SIGN_IN, ROOM_404),
                security=CALLER,
            )
        },
        "/api/rooms/{room}/typing": {
            "post": _typing_operation(),
        },
        "/api/auth": {
            "post": operation(
                "signIn",
                "Sign the session in with the application's token, or refresh it",
                tag=API,
                description="Open streams of the session go on with the newer token.",
                ok={200: answer("the signed-in user", ref("SignedIn"))},
                errors_=errors(
                    {400: "not a JSON object with a string `token`"},
                    {401: "a bad or expired token, or no sign-in key configured"},
                    errors(CROSS_SITE, {403: "the user is banned (`banned`)"}),
                    {415: "a body that is not JSON"},
                    SESSIONS,
                ),
                body=json_content(ref("SignInToken")),
                security=[{"session": []}, {}],
            ),
            "delete": operation(
                "signOut",
                "Sign out: the session ends, and every stream of it",
                tag=API,
                description="SSE streams get `event: signed_out`, WebSockets close 4001.",
                ok={204: answer("signed out (also without a session)")},
                errors_=errors(SIGN_IN, CROSS_SITE),
                security=[{"session": []}, {}],
            ),
        },
        "/api/rooms/{room}/events": {
            "get": operation(
                "events",
                "The room's live events, as Server-Sent Events",
                tag=API,
                description=SSE_EVENTS,
                parameters=["room", "Last-Event-ID", "last_event_id"],
                ok={
                    200: {
                        "description": "the stream, until the client or the server ends it",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                errors_=errors(
                    {400: "a bad Last-Event-ID"},
                    SIGN_IN,
                    {403: "banned (`banned`)"},
                    ROOM_404,
                    errors(STREAMS, SESSIONS),
                ),
                security=CALLER,
            )
        },
        "/api/rooms/{room}/ws": {
            "get": operation(
                "websocket",
                "The room's live events, and posting, over a WebSocket",
                tag=API,
                description=WS_FRAMES,
                parameters=["room", "since"],
                ok={101: answer("switching to the WebSocket protocol")},
                errors_=errors(
                    {400: "not an upgrade request, or a bad `since`"},
                    SIGN_IN,
                    errors(CROSS_SITE, {403: "banned (`banned`)"}),
                    ROOM_404,
                    errors(STREAMS, SESSIONS),
                ),
                security=CALLER,
            )
        },
    }


def _typing_operation() -> Schema:
    op = operation(
        "postTyping",
        "Tell the others in the room that the caller is typing",
        tag=API,
        description=(
            "The others' streams get `typing` `{user_id, name}` (not the caller's own), at "
            "most one per user per 2 s; rooms over `presence_list_max` get none. Nothing is "
            "stored. Typing notices have budgets of their own, at the messages' rates."
        ),
        parameters=["room"],
        ok={204: answer("accepted (sent, or coalesced with a notice of the last 2 s)")},
        errors_=errors(
            {400: "a body that is not a JSON object"},
            SIGN_IN,
            errors(CROSS_SITE, MAY_POST),
            ROOM_404,
            {415: "a body that is not JSON"},
            errors({429: "the user's or the address's typing budget is spent"}, SESSIONS),
        ),
        body=json_content(ref("TypingRequest")),
        security=CALLER,
    )
    op["requestBody"]["required"] = False  # (no body, or `{}`)
    return op


def form(schema: Schema) -> dict[str, Schema]:
    return {
        "application/x-www-form-urlencoded": {"schema": schema},
        "multipart/form-data": {"schema": schema},
    }
