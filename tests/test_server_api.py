"""The server API (``/server/v1/``): keys and scopes, every route, its refusals;
then real servers of two workers: fan-out, broadcasts, listing 1,000 rooms,
and disconnects and bans that reach every worker within a second."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from .signing import SECRET, claims, sign
from .support import error_of, metric
from .test_refusals import Footprint
from .test_signin import bearer

PUBLISH = "p" * 40
READ = "r" * 40
MODERATE = "m" * 40
ALL = "a" * 40
KEYS = [
    f"pub:{PUBLISH}:publish",
    f"reader:{READ}:read",
    f"mod:{MODERATE}:moderate",
    f"all:{ALL}:publish,read,moderate",
]
SCOPE_SECRETS = {"publish": PUBLISH, "read": READ, "moderate": MODERATE}
V1 = "/server/v1"

# Every route: method, path, JSON body, scope, the status it answers.
ROUTES: list[tuple[str, str, Any, str, int]] = [
    ("POST", f"{V1}/rooms/lobby/messages", {"text": "hi", "user_id": "alice"}, "publish", 201),
    ("POST", f"{V1}/broadcast", {"rooms": ["lobby", "other"], "text": "hi"}, "publish", 200),
    ("GET", f"{V1}/rooms", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby/messages", None, "read", 200),
    ("GET", f"{V1}/rooms/lobby/online", None, "read", 200),
    ("PUT", f"{V1}/rooms/team-a/members/alice", {"role": "member"}, "moderate", 204),
    ("DELETE", f"{V1}/rooms/team-a/members/alice", None, "moderate", 204),
    ("POST", f"{V1}/users/alice/disconnect", {"reconnect": True}, "moderate", 202),
    ("PUT", f"{V1}/users/alice/ban", {"for_s": 60, "reason": "spam"}, "moderate", 204),
    ("DELETE", f"{V1}/users/alice/ban", None, "moderate", 204),
]


def key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def app_client(make_app: Any, aiohttp_client: Any, **settings: Any) -> Any:
    settings.setdefault("server_api_keys", KEYS)
    app = await make_app(auth_jwt_secret=SECRET, private_room_prefixes=["team-"], **settings)
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def call(client: Any, method: str, path: str, body: Any, secret: str | None) -> Any:
    headers = key(secret) if secret else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_each_route_answers_a_key_with_its_scope_and_refuses_others_writing_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    client = await app_client(make_app, aiohttp_client)
    for method, path, body, scope, status in ROUTES:
        before = await Footprint.of(redis)
        for secret in (None, "x" * 40, PUBLISH[:-1], f"{PUBLISH} {PUBLISH}"):
            resp = await call(client, method, path, body, secret)
            assert (await error_of(resp, 401))["code"] == "unauthorized", (method, path)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        for other, secret in SCOPE_SECRETS.items():
            if other != scope:
                resp = await call(client, method, path, body, secret)
                error = await error_of(resp, 403)
                assert error["code"] == "scope" and scope in error["message"]
        (await Footprint.of(redis)).assert_same_as(before)
        for secret in (SCOPE_SECRETS[scope], ALL):
            resp = await call(client, method, path, body, secret)
            assert resp.status == status, (method, path, await resp.text())
            assert "Set-Cookie" not in resp.headers
    # What was asked of each route is counted, by its template.
    text = await (await client.get("/metrics")).text()
    sample = 'chat_server_api_requests_total{method="PUT",route="%s",status="%s"}'
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 204)) == 2
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 401)) == 4
    assert metric(text, sample % ("/server/v1/users/{user_id}/ban", 403)) == 2


async def test_without_a_key_every_path_is_an_unknown_one(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client, server_api_keys=[])
    unknown = await client.get("/no/such/path")
    expected = (unknown.status, await unknown.json())
    for method, path, body, scope, _ in ROUTES:
        resp = await call(client, method, path, body, SCOPE_SECRETS[scope])
        assert (resp.status, await resp.json()) == expected, (method, path)
        assert "Set-Cookie" not in resp.headers


async def test_a_sign_in_token_is_no_server_key_and_a_server_key_no_token(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    token = sign(claims(sub="alice"))
    resp = await client.get(f"{V1}/rooms", headers=bearer(token))
    assert (await error_of(resp, 401))["code"] == "unauthorized"
    resp = await client.get("/api/session", headers=key(READ))
    assert (await error_of(resp, 401))["code"] == "invalid_token"


async def test_the_browsers_cross_site_checks_do_not_apply(
    make_app: Any, aiohttp_client: Any
) -> None:
    client = await app_client(make_app, aiohttp_client)
    headers = key(PUBLISH) | {"Origin": "https://elsewhere.example"}
    resp = await client.post(f"{V1}/rooms/lobby/messages", json={"text": "hi"}, headers=headers)
    assert resp.status == 201
    resp = await client.post("/api/rooms/lobby/messages", json={"text": "hi"}, headers=headers)
    assert resp.status == 403


async def test_a_message_is_posted_as_a_user_or_as_the_key_once_per_idempotency_key(
    make_app: Any, aiohttp_client: Any
) -> None:
    # Budgets as tight as can be: the backend has none.
    client = await app_client(
        make_app, aiohttp_client, rate_limit_per_s=0.01, rate_limit_burst=1,
        address_rate_limit_per_s=0.01, address_rate_limit_burst=1, address_rooms_per_min=1,
    )  # fmt: skip
    path = f"{V1}/rooms/lobby/messages"
    sent = []
    for body in ({"text": "one"}, {"text": "two", "user_id": "alice", "name": " Alice  B "}):
        resp = await client.post(path, json=body, headers=key(PUBLISH))
        assert resp.status == 201, await resp.text()
        sent.append((await resp.json())["message"])
    assert [(m["user_id"], m["name"], m["text"]) for m in sent] == [
        ("server:pub", "pub", "one"),
        ("alice", "Alice B", "two"),
    ]
    # The same Idempotency-Key: the first message, once per key and user.
    first = None
    for secret, new in ((PUBLISH, True), (PUBLISH, False), (ALL, True)):
        headers = key(secret) | {"Idempotency-Key": "k-1"}
        resp = await client.post(path, json={"text": "x", "user_id": "bob"}, headers=headers)
        assert resp.status == 201
        message = (await resp.json())["message"]
        assert (resp.headers.get("Idempotent-Replayed") is None) == new
        if secret == PUBLISH:
            first = first or message
            assert message == first
    # A banned user may be posted as by the backend; the history has all.
    await client.put(f"{V1}/users/bob/ban", json={}, headers=key(MODERATE))
    resp = await client.post(path, json={"text": "y", "user_id": "bob"}, headers=key(PUBLISH))
    assert resp.status == 201
    resp = await client.get(f"{path}?limit=200", headers=key(READ))
    assert [m["text"] for m in (await resp.json())["messages"]] == ["one", "two", "x", "x", "y"]


async def test_history_pages_before_and_after_an_id(make_app: Any, aiohttp_client: Any) -> None:
    client = await app_client(make_app, aiohttp_client, message_max_chars=10_000)
    path = f"{V1}/rooms/lobby/messages"
    ids = []
    for i in range(30):
        # (Long texts: a page of history holds 10, so 30 take several.)
        text = f"{i}:" + "x" * 9000
        resp = await client.post(path, json={"text": text}, headers=key(PUBLISH))
        ids.append((await resp.json())["message"]["id"])

    async def page(query: str) -> list[str]:
        resp = await client.get(f"{path}?{query}", headers=key(READ))
        assert resp.status == 200, await resp.text()
        return [m["id"] for m in (await resp.json())["messages"]]

    assert await page("limit=25") == ids[5:]
    assert await page(f"before={ids[20]}&limit=15") == ids[5:20]
    assert await page(f"after={ids[2]}&limit=25") == ids[3:28]
    assert await page(f"after={ids[2]}&before={ids[10]}&limit=200") == ids[3:10]
    assert await page(f"after={ids[-1]}") == []
    assert await page("after=0-0&limit=12") == ids[:12]
    assert await page("after=18446744073709551615-18446744073709551615") == []
    assert await page("before=0-0&after=0-0") == []
