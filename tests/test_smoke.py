from __future__ import annotations

from typing import Any


async def test_session_then_post_then_history(client: Any) -> None:
    resp = await client.get("/api/session")
    assert resp.status == 200
    me = await resp.json()
    resp = await client.post("/api/rooms/general/messages", json={"text": "hi"})
    assert resp.status == 201, await resp.text()
    message = (await resp.json())["message"]
    assert message["user_id"] == me["user_id"]
    resp = await client.get("/api/rooms/general/messages")
    assert [m["id"] for m in (await resp.json())["messages"]] == [message["id"]]
