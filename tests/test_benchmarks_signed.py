"""The benchmark's ``chat-signed`` target: every client signed in with a token.

Its streams and senders must really be signed in (else its figures would
compare the chat server anonymous with itself), and a run with ``chat`` and
``chat-signed`` shows what signing in costs, in the run's table and under the
report's summary table.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
import redis

from benchmarks.clients import Recorder, Subscriber, open_all, stop_all
from benchmarks.publisher import Publisher
from benchmarks.targets import ServerOptions
from benchmarks.variants import ChatSignedTarget
from harness.redis_servers import RedisProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROOM = "bench"

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


async def until(check: Any, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_signed_streams_and_senders_are_their_tokens_users(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    store = cast(RedisProcess, SimpleNamespace(url=redis_url))
    target = ChatSignedTarget(ServerOptions(workers=2, users=3), store, str(tmp_path))
    subs: list[Subscriber] = []
    target.start()
    try:
        endpoint = target.endpoint()
        recorder = Recorder()
        subs = [
            Subscriber(kind, endpoint, ROOM, recorder, token=endpoint.token(i))
            for i, kind in enumerate(("ws", "sse", "ws"))
        ]
        assert len(await open_all(subs, len(subs), 20)) == len(subs)
        publisher = Publisher(target.base_url, target.senders(2))
        try:
            await publisher.open(ROOM)
            window = await publisher.run(20, 0.2, lambda seq: ROOM)
        finally:
            await publisher.close()
        assert len(window.accepted) == window.total
        await until(lambda: recorder.first_copies == len(subs) * window.total)

        # Nobody made a session: the streams and the senders sent tokens, no cookie.
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.keys("*chat_session*") == []
        finally:
            client.close()
        # Each stream is online as its token's user, with its token's name.
        assert await target.sign_in_details(ROOM) == {
            "online_users": 3,
            "online_users_listed": 3,
            "listed_with_token_ids": 3,
        }
        # Each sender posted as its token's user, with its token's name.
        token = target.sender_credentials(1)[0][1]
        async with (
            aiohttp.ClientSession(
                target.base_url,
                headers={"Authorization": f"Bearer {token}"},
                cookie_jar=aiohttp.DummyCookieJar(),
            ) as session,
            session.get(f"/api/rooms/{ROOM}/messages", params={"limit": "200"}) as resp,
        ):
            messages = (await resp.json())["messages"]
        authors = {(m["user_id"], m["name"]) for m in messages}
        assert authors == {
            ("bench-sender-0", "Bench sender 0"),
            ("bench-sender-1", "Bench sender 1"),
        }
    finally:
        await stop_all(subs)
        target.stop()


def loadgen(tmp_path: pathlib.Path, scenario: str, *options: str) -> dict[str, Any]:
    path = tmp_path / f"{scenario}-signed.json"
    command = [sys.executable, "-m", "benchmarks.loadgen", "--scenario", scenario]
    command += ["--targets", "chat,chat-signed", "--subscribers", "20", "--settle", "0.2"]
    command += ["--no-progress", "--json", str(path), *options]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return cast(dict[str, Any], json.loads(path.read_text()))


def test_a_run_with_chat_and_chat_signed_shows_what_signing_in_costs(
    tmp_path: pathlib.Path,
) -> None:
    fanout = loadgen(tmp_path, "fanout", "--rate", "10", "--duration", "1", "--drain-timeout", "2")
    storm = loadgen(tmp_path, "storm")
    for run in (fanout, storm):
        results = run["cases"][0]["results"]
        assert list(results) == ["chat", "chat-signed"]
        # The signed streams were online as their tokens' users; the anonymous not.
        signed = results["chat-signed"]["details"]
        assert signed["online_users"] == signed["listed_with_token_ids"] == 20, signed
        assert "online_users" not in results["chat"]["details"]
    assert fanout["cases"][0]["results"]["chat-signed"]["lost"] == 0

    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # Each run's table: a column for each target, then chat-signed/chat.
    headers = [line.split() for line in report.splitlines() if line.startswith("metric ")]
    assert headers == [["metric", "chat", "chat-signed", "chat-signed/chat"]] * 2
    # Under the summary table, before the method: the sign-in cost, linking to both runs.
    line = " ".join(report[: report.index("The targets\n")].split())
    assert "- Sign-in cost, chat-signed/chat (" in line
    assert "fan-out (20 ws, `fanout-signed`_): server CPU per 1k deliveries " in line
    assert ", server CPU per connect " in line
    assert "storm (20 mixed, `storm-signed`_): server CPU per opened stream " in line


def test_runs_without_chat_signed_leave_the_summary_as_it_was(tmp_path: pathlib.Path) -> None:
    committed = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    anonymous = [
        path
        for path in committed
        if all(
            "chat-signed" not in case["results"] for case in json.loads(path.read_text())["cases"]
        )
    ]
    assert anonymous
    for path in anonymous:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Sign-in cost" not in report
    headers = [line.split() for line in report.splitlines() if line.startswith("metric ")]
    assert headers and all("chat-signed" not in header for header in headers)
