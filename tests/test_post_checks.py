"""On one Redis a post is checked by the publish script itself: one command,
one round trip, with the name the worker kept confirmed there. What it
checks holds as before (the suites of budgets, bans, idempotency and
guessed sessions run on this path too); here: that it is one script, and
that a name changed elsewhere is the one posted.

Two apps on one Redis stand for two workers. Real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from server.store.keys import name_key

from .support import two_apps

ROOM = "/api/rooms/lobby/messages"


async def post(client: Any, cookie: str, text: str = "hi", **headers: str) -> dict[str, Any]:
    resp = await client.post(
        ROOM, json={"text": text}, headers={"Cookie": f"chat_session={cookie}", **headers}
    )
    assert resp.status in (200, 201), await resp.text()
    return dict((await resp.json())["message"])


async def scripts_run(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_returning_users_post_is_one_script(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    """Budgets, ban, session, name and message in one EVALSHA a post (it
    was three: each budget's script, then the publish script); with an
    Idempotency-Key too (it was three round trips)."""
    first, _ = await two_apps(make_app, aiohttp_client)
    resp = await first.get("/api/session")
    cookie = resp.cookies["chat_session"].value
    await post(first, cookie)  # (the worker reads the user's name once)
    posts = 20
    before = await scripts_run(redis)
    for i in range(posts):
        await post(first, cookie, f"m{i}", **({"Idempotency-Key": f"k{i}"} if i % 2 else {}))
    run = await scripts_run(redis) - before
    # (A few more may be the worker's own: presence, leases.)
    assert posts <= run <= posts + 5, run


async def test_a_name_changed_on_another_worker_is_the_one_posted(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis
) -> None:
    first, second = await two_apps(make_app, aiohttp_client)
    resp = await first.get("/api/session")
    cookie = resp.cookies["chat_session"].value
    before = (await post(first, cookie))["name"]
    renamed = await second.put(
        "/api/session", json={"name": "Ada"}, headers={"Cookie": f"chat_session={cookie}"}
    )
    assert renamed.status == 200, await renamed.text()
    assert (await post(first, cookie))["name"] == "Ada" != before
    # A name Redis lost (the key expired) is made again, as before.
    user_id = (await post(first, cookie))["user_id"]
    await redis.delete(name_key(user_id))
    again = await post(first, cookie)
    assert again["name"] and again["name"] != "Ada"
    assert await redis.get(name_key(user_id)) == again["name"]


@pytest.mark.parametrize("where", ["here", "elsewhere"])
async def test_a_retry_in_another_room_costs_nothing(
    make_app: Any, aiohttp_client: Any, redis: aioredis.Redis, where: str
) -> None:
    """A key first used in one room answers a retry sent to another with
    the first message, charging nothing, checked in the script."""
    first, _ = await two_apps(make_app, aiohttp_client)
    resp = await first.get("/api/session")
    cookie = resp.cookies["chat_session"].value
    await post(first, cookie)
    sent = await post(first, cookie, "once", **{"Idempotency-Key": "k"})
    budgets = sorted([key async for key in redis.scan_iter("chat:rate:*")])
    held = [await redis.get(key) for key in budgets]
    room = ROOM if where == "here" else "/api/rooms/other/messages"
    resp = await first.post(
        room,
        json={"text": "once"},
        headers={"Cookie": f"chat_session={cookie}", "Idempotency-Key": "k"},
    )
    assert resp.status == 201 and resp.headers.get("Idempotent-Replayed") == "true"
    assert (await resp.json())["message"] == sent
    assert [await redis.get(key) for key in budgets] == held
