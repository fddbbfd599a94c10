"""The benchmark's variants of the chat target that publish otherwise
(``chat-api``), with webhooks on (``chat-webhooks``) or with edits and
typing among the traffic (``chat-features``), and the ``publish`` scenario.

``chat-api``'s senders must really post through the server API with its key
(else it would compare the browsers' POST with itself), ``chat-webhooks``'
receiver must get every published message's event (else the run says so),
``chat-features``' edits must reach every stream once, in order, as messages
do, and its streams' users must really type (over both transports); a run
with them shows each variant over chat in its table and in the summary's
variants block.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
import redis

from benchmarks.publisher import Publisher
from benchmarks.targets import ServerOptions
from benchmarks.variants import ChatApiTarget, ChatWebhooksTarget
from harness.redis_servers import RedisProcess

ROOT = pathlib.Path(__file__).resolve().parent.parent
ROOM = "bench"

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


def report(*paths: pathlib.Path) -> str:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.report", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


async def test_api_senders_post_through_the_server_api_as_their_users(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    store = cast(RedisProcess, SimpleNamespace(url=redis_url))
    target = ChatApiTarget(ServerOptions(workers=2), store, str(tmp_path))
    target.start()
    try:
        publisher = Publisher(target.base_url, target.senders(2))
        try:
            await publisher.open(ROOM)
            window = await publisher.run(20, 0.3, lambda seq: ROOM)
        finally:
            await publisher.close()
        assert window.total and len(window.accepted) == window.total

        # Nobody made a session: the senders sent the key, no cookie.
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.keys("*chat_session*") == []
        finally:
            client.close()
        # Every message is its sender's user's, as the server API was told.
        async with (
            aiohttp.ClientSession(target.base_url) as session,
            session.get(f"/api/rooms/{ROOM}/messages", params={"limit": "200"}) as resp,
        ):
            messages = (await resp.json())["messages"]
        assert len(messages) == 2 + window.total
        assert {m["user_id"] for m in messages} == {"bench-sender-0", "bench-sender-1"}
    finally:
        target.stop()


async def test_the_webhook_receiver_gets_every_event_or_the_figures_say_so(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    store = cast(RedisProcess, SimpleNamespace(url=redis_url))
    target = ChatWebhooksTarget(ServerOptions(workers=2), store, str(tmp_path))
    target.start()
    try:
        # The receiver is a process of its own, not one of the server's.
        assert target.receiver_pid and target.receiver_pid not in target.pids()
        publisher = Publisher(target.base_url, target.senders(2))
        try:
            await publisher.open(ROOM)
            target.before_publishing()
            window = await publisher.run(40, 0.5, lambda seq: ROOM)
        finally:
            await publisher.close()
        assert window.total and len(window.accepted) == window.total
        figures = await target.after_publishing(window.accepted, 10.0)
        assert figures["webhook_events"] == window.total, figures
        assert figures["webhook_missing"] == 0
        assert figures["webhook_bad_signatures"] == 0
        assert figures["webhook_latency_p99_ms"] > 0
        # An event that never comes is counted missing, once nothing arrives for a while.
        never = window.first_seq + window.total + 1000
        figures = await target.after_publishing([*window.accepted, never], 0.5)
        assert figures["webhook_missing"] == 1
    finally:
        target.stop()
    assert target.receiver is None


def loadgen(tmp_path: pathlib.Path, name: str, *options: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    command = [sys.executable, "-m", "benchmarks.loadgen", "--subscribers", "3"]
    command += ["--settle", "0.2", "--drain-timeout", "3", "--no-progress"]
    command += ["--json", str(path), *options]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return cast(dict[str, Any], json.loads(path.read_text()))


def test_a_run_with_the_variants_shows_each_over_chat(tmp_path: pathlib.Path) -> None:
    targets = "chat,chat-api,chat-webhooks"
    publish = loadgen(
        tmp_path, "publish-variants", "--scenario", "publish", "--connections", "3",
        "--duration", "1", "--targets", targets,
    )  # fmt: skip
    fanout = loadgen(
        tmp_path, "fanout-variants", "--scenario", "fanout", "--rate", "20",
        "--duration", "1", "--targets", targets,
    )  # fmt: skip
    for run in (publish, fanout):
        results = run["cases"][0]["results"]
        assert list(results) == ["chat", "chat-api", "chat-webhooks"]
        for figures in results.values():
            assert figures["published"] > 0 and figures["lost"] == 0, figures
        hooks = results["chat-webhooks"]
        assert hooks["webhook_events"] == hooks["published"] and hooks["webhook_missing"] == 0
        assert "webhook_missing" not in results["chat"]
    sending = publish["cases"][0]["results"]["chat"]
    assert sending["connections"] == 3 and sending["published_per_s"] > 0

    text = report(tmp_path)
    # Each run's table: a column per target, then each variant over chat.
    headers = [line.split() for line in text.splitlines() if line.startswith("metric ")]
    expected = ["metric", "chat", "chat-api", "chat-webhooks", "chat-api/chat"]
    assert headers == [[*expected, "chat-webhooks/chat"]] * 2
    rows = {line.split("  ")[0] for line in text.splitlines()}
    assert {"webhook events missing", "messages accepted per second"} <= rows
    # Under the summary table, before the method: a line per variant with its goal.
    block = " ".join(text[: text.index("The targets\n")].split())
    assert "- Publishing through the server API, chat-api/chat (" in block
    assert "publishing (3 ws, `publish-variants`_): server CPU per message " in block
    assert "- Webhooks on, chat-webhooks/chat (" in block
    assert "fan-out (3 ws at 20 msg/s, `fanout-variants`_): POST round trip p99 " in block
    assert "webhook events missing 0" in block
    assert "Sign-in cost" not in block
    # The publish scenario has its row in the summary table once it has a run.
    assert "| publishing:" in text


def test_rounds_alternate_the_order_and_the_summary_judges_their_median(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "fanout-rounds.json"
    command = [sys.executable, "-m", "benchmarks.loadgen", "--subscribers", "3"]
    command += ["--settle", "0.2", "--drain-timeout", "3", "--no-progress", "--json", str(path)]
    command += ["--scenario", "fanout", "--rate", "20", "--duration", "1"]
    command += ["--targets", "chat,chat-api", "--rounds", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    # Each target started once a round, the second round in the reverse order.
    started = [line.split(":")[0] for line in done.stderr.splitlines()]
    assert [name for name in started if name in ("chat", "chat-api")] == [
        "chat", "chat-api", "chat-api", "chat",
    ]  # fmt: skip
    run = json.loads(path.read_text())
    label = run["cases"][0]["params"]["case"]
    assert [case["label"] for case in run["cases"]] == [
        f"{label}, round 1 of 2",
        f"{label}, round 2 of 2",
    ]
    for case in run["cases"]:
        assert list(case["results"]) == ["chat", "chat-api"]
        assert all(figures["lost"] == 0 for figures in case["results"].values())
    # The variants block: the median of the two rounds' ratios, and their range.
    key = "server_cpu_ms_per_message"
    quotients = sorted(
        case["results"]["chat-api"][key] / case["results"]["chat"][key] for case in run["cases"]
    )
    text = report(tmp_path)
    block = " ".join(text.split())
    median = (quotients[0] + quotients[1]) / 2
    verdict = "met" if median <= 1.0 else "missed"
    assert (
        f"server CPU per message {median:.2f} (median of 2 rounds, {quotients[0]:.2f} to "
        f"{quotients[1]:.2f}; goal 1.0: {verdict})"
    ) in block
    # The summary table: each of chat's figures the median of its rounds.
    per_1k = "server_cpu_ms_per_1k_deliveries"
    fmt = next(metric[2] for metric in run["metrics"] if metric[1] == per_1k)
    chat = [case["results"]["chat"][per_1k] for case in run["cases"]]
    row = next(line for line in text.splitlines() if line.startswith("| fan-out:"))
    assert row.split("|")[3].strip() == fmt.format(sum(chat) / 2), row


def test_the_committed_results_render_as_before() -> None:
    text = report(ROOT / "benchmarks" / "results")
    assert text == (ROOT / "BENCHMARKS.rst").read_text()


def test_a_run_with_edits_and_typing_delivers_every_edit_once_and_counts_typing_apart(
    tmp_path: pathlib.Path,
) -> None:
    streams, requests = 5, 40  # (20 a second for 2 s)
    run = loadgen(
        tmp_path, "fanout-features", "--scenario", "fanout", "--subscribers", str(streams),
        "--transport", "mixed", "--rate", "20", "--duration", "2", "--typing-every", "2",
        "--targets", "chat,chat-features,bare,bare-typing",
    )  # fmt: skip
    results = run["cases"][0]["results"]
    assert list(results) == ["chat", "chat-features", "bare", "bare-typing"]
    plain, features = results["chat"], results["chat-features"]
    # The bare broadcaster's twin types as chat-features' streams do (it has no
    # sessions: its SSE streams' users POST without a cookie), and cannot edit.
    twin = results["bare-typing"]
    assert twin["typing_sent"] == streams and twin["typing_skipped"] == 0, twin
    assert twin["typing_refused"] == 0, twin["typing_refused_kinds"]
    assert twin["deliveries"] == twin["expected_deliveries"] == requests * streams
    assert "typing_sent" not in results["bare"] and "edits" not in twin
    # The same number of requests; a tenth of chat-features' are edits, and every
    # stream gets each edit once, in order, as it gets each new message.
    for figures in (plain, features):
        assert figures["published"] == requests and figures["publish_failures"] == 0, figures
        assert figures["deliveries"] == figures["expected_deliveries"] == requests * streams
        assert figures["lost"] == figures["duplicates"] == figures["out_of_order"] == 0
    assert features["edits"] == requests // 10
    assert features["update_deliveries"] == features["edits"] * streams
    # Every stream's user typed once in the window (3 SSE streams' users with a POST,
    # 2 WebSocket streams with a frame), none refused; the others got the notices,
    # counted apart from the deliveries.
    assert features["typing_sent"] == streams and features["typing_skipped"] == 0, features
    assert features["typing_refused"] == 0, features["typing_refused_kinds"]
    assert 0 < features["typing_received"] <= streams * (streams - 1)
    assert not {"edits", "update_deliveries", "typing_sent", "typing_received"} & set(plain)

    text = report(tmp_path)
    headers = [line.split() for line in text.splitlines() if line.startswith("metric ")]
    columns = ["chat", "chat-features", "bare", "bare-typing"]
    ratios = ["chat/bare", "chat-features/chat", "bare-typing/bare"]
    assert headers == [["metric", *columns, *ratios]]
    rows = {line.split("  ")[0] for line in text.splitlines()}
    assert {"of those, edits (200)", "typing notices received"} <= rows
    block = " ".join(text[: text.index("The targets\n")].split())
    assert "- Edits and typing, chat-features/chat (" in block
    assert (
        "fan-out (5 mixed at 20 msg/s, `fanout-features`_): server CPU per 1k deliveries " in block
    )
    assert "typing notices received " in block
    per_1k = "server_cpu_ms_per_1k_deliveries"
    quotient = twin[per_1k] / results["bare"][per_1k]
    assert (
        f"bare-typing/bare under the same load: server CPU per 1k deliveries {quotient:.2f}"
        in block
    )
    # The goal judges what edits and typing add to chat over what the same
    # typing adds to bare, and only that.
    added = features[per_1k] / plain[per_1k] / quotient
    verdict = "met" if added <= 1.1 else "missed"
    assert block.count("(goal 1.1: ") == 1, block
    assert (
        f"chat-features/chat over bare-typing/bare: server CPU per 1k deliveries "
        f"{added:.2f} (goal 1.1: {verdict})" in block
    )
