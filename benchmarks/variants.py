"""The variants of the ``chat`` target, and the registry of every target.

A variant is the chat server started the same way as ``chat`` with one
thing changed; in a run with both, each table gains a ``<variant>/chat``
column, and the summary of ``BENCHMARKS.rst`` a line for the variant
(``benchmarks/tables.py``, ``benchmarks/summary.py``):

- ``chat-signed``: a sign-in secret (``auth_jwt_secret``), every client
  signed in with a token of its own (``benchmarks/signin.py``): what
  signing in costs;
- ``chat-api``: a server API key with the publish scope, every sender
  posting through ``POST /server/v1/rooms/{room}/messages`` as a user of
  its own instead of the browsers' POST: what publishing from a backend
  costs;
- ``chat-webhooks``: ``webhook_url`` pointing at a receiver the harness runs
  (``benchmarks/hook_receiver.py``, a process of its own): what webhooks
  cost, and whether every published message's event arrived;
- ``chat-features``: the same server and settings as ``chat``, used as a chat
  is: a tenth of the senders' requests are edits, and every stream's user
  types once every 10 s (:class:`ChatFeaturesTarget`): what edits and typing
  cost.

``bare-typing`` is the bare broadcaster under ``chat-features``' typing
(:class:`BareTypingTarget`): what that typing costs the least server, so
that ``chat-features/chat`` can be read beside ``bare-typing/bare``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from harness.processes import free_port, stop_process
from harness.redis_servers import RedisProcess

from . import hook_receiver, signin
from .clients import Endpoint
from .measure import percentile
from .procfs import cpu_seconds
from .targets import (
    BareTarget,
    BenchError,
    ChatTarget,
    Sender,
    ServerOptions,
    SocketioTarget,
    Target,
    start_peer,
)

# The chat-api target's key: a name, a secret (at least 32 characters), the scope.
API_KEY_NAME = "bench"
API_KEY_SECRET = "chat-benchmark-server-api-key-not-for-production"
API_PATH = "/server/v1/rooms/{room}/messages"
# The chat-webhooks target's secret, which signs every event.
WEBHOOK_SECRET = "chat-benchmark-webhook-secret-not-for-production"


class ChatSignedTarget(ChatTarget):
    """The chat server with a sign-in secret, every client signed in with a token.

    Only the secret differs from ``chat``'s settings (``anonymous`` keeps its
    default): each stream sends its own user's token on its request, and each
    sender posts with its own, with no cookie (programs sign in so, without a
    session)."""

    name = "chat-signed"
    description = "the chat server, every client signed in with a token (python -m server)"

    def __init__(self, opts: ServerOptions, redis: RedisProcess, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.tokens: tuple[str, ...] = ()
        self.credentials: list[tuple[str, str]] = []

    def settings(self) -> dict[str, str]:
        return super().settings() | {"CHAT_AUTH_JWT_SECRET": signin.SECRET}

    def start(self) -> None:
        self.tokens = signin.subscriber_tokens(max(1, self.opts.users))
        super().start()

    def endpoint(self) -> Endpoint:
        return dataclasses.replace(super().endpoint(), tokens=self.tokens)

    def sender_credentials(self, n: int) -> list[tuple[str, str]]:
        """(user id, token) of ``n`` senders, each its own user."""
        if len(self.credentials) < n:
            self.credentials = signin.sender_credentials(n)
        return self.credentials[:n]

    def senders(self, n: int) -> list[Sender]:
        return [
            Sender(headers={"Authorization": f"Bearer {token}"}, cookies=False, user_id=user)
            for user, token in self.sender_credentials(n)
        ]

    async def sign_in_details(self, room: str) -> dict[str, Any]:
        return await signin.online_users(self.base_url, room, self.sender_credentials(1)[0])


class ChatApiTarget(ChatTarget):
    """The chat server with one server API key (publish scope); every sender
    posts through the server API, ``Authorization: Bearer <secret>`` and
    ``{"text", "user_id": "bench-sender-<i>"}``, no cookie. Its streams are
    anonymous visitors, as ``chat``'s."""

    name = "chat-api"
    description = "the chat server, every message posted through the server API"

    def settings(self) -> dict[str, str]:
        key = f"{API_KEY_NAME}:{API_KEY_SECRET}:publish"
        return super().settings() | {"CHAT_SERVER_API_KEYS": key}

    def senders(self, n: int) -> list[Sender]:
        headers = {"Authorization": f"Bearer {API_KEY_SECRET}"}
        return [
            Sender(
                API_PATH,
                headers,
                {"user_id": signin.sender_user(i)},
                cookies=False,
                user_id=signin.sender_user(i),
            )
            for i in range(n)
        ]


class ChatWebhooksTarget(ChatTarget):
    """The chat server with ``webhook_url`` pointing at a receiver of the
    harness's, in a process of its own, and ``webhook_secret``; its other
    settings are ``chat``'s (``webhook_events`` its default: messages
    created, edited, deleted). After each publishing window the harness
    waits (within the CPU it counts) until the receiver has every published
    message's event, or until none came for the drain timeout."""

    name = "chat-webhooks"
    description = "the chat server, webhooks on (python -m server)"
    READY = re.compile(r"hook-receiver: serving (http://\S+) \(pid (\d+)\)")

    def __init__(self, opts: ServerOptions, redis: RedisProcess, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.receiver_url = ""
        self.receiver_pid = 0
        self.receiver_cpu0 = 0.0
        self.receiver: Any = None

    def settings(self) -> dict[str, str]:
        return super().settings() | {
            "CHAT_WEBHOOK_URL": self.receiver_url,
            "CHAT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }

    def start(self) -> None:
        cmd = [sys.executable, "-m", "benchmarks.hook_receiver", "--port", str(free_port())]
        env = self.env() | {hook_receiver.SECRET_ENV: WEBHOOK_SECRET}
        log_path = os.path.join(self.workdir, "hook-receiver.log")
        self.receiver, match = start_peer(cmd, env, log_path, self.READY)
        self.receiver_url, self.receiver_pid = match.group(1), int(match.group(2))
        try:
            super().start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        if self.receiver is not None:
            stop_process(self.receiver, timeout=5)
            self.receiver = None

    async def receiver_stats(self) -> dict[str, Any]:
        url = self.receiver_url.removesuffix("/hook") + "/stats"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            if resp.status != 200:
                raise BenchError(f"the webhook receiver answered {resp.status}")
            stats: dict[str, Any] = await resp.json()
        return stats

    def before_publishing(self) -> None:
        self.receiver_cpu0 = cpu_seconds([self.receiver_pid])

    async def after_publishing(self, accepted: Sequence[int], quiet_s: float) -> dict[str, Any]:
        wanted = set(accepted)
        last, last_change = -1, time.monotonic()
        while True:
            stats = await self.receiver_stats()
            arrived = {seq: ms for seq, ms in stats["latency_ms"] if seq in wanted}
            if len(arrived) == len(wanted):
                break
            if len(arrived) != last:
                last, last_change = len(arrived), time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                break
            await asyncio.sleep(0.1)
        latencies = sorted(arrived.values())
        receiver_cpu = cpu_seconds([self.receiver_pid]) - self.receiver_cpu0
        return {
            "webhook_events": len(arrived),
            "webhook_missing": len(wanted) - len(arrived),
            "webhook_duplicates": stats["duplicates"],
            "webhook_bad_signatures": stats["bad_signatures"] + stats["unreadable"],
            "webhook_latency_p50_ms": percentile(latencies, 50),
            "webhook_latency_p99_ms": percentile(latencies, 99),
            "webhook_receiver_cpu_s": receiver_cpu,
        }


class ChatFeaturesTarget(ChatTarget):
    """The chat server as ``chat`` (same settings, same budgets, raised as
    there), its clients using the features beside posting:

    - edits: every 10th request of the publishing schedule is an edit
      instead of a new message, at the same total rate. The sender that
      takes it PATCHes the last message it posted, as its author (the id
      from its 201 answer: :class:`~benchmarks.publisher.Publisher`). Every
      stream gets it as ``message_updated`` (SSE event, WebSocket frame),
      checked once and in order as a message is;
    - typing: every stream's user says it is typing once every 10 s
      (``--typing-every``), the streams taking turns evenly over the window
      (:class:`~benchmarks.typists.Typists`): a WebSocket stream with the
      ``{"type": "typing"}`` frame, an SSE stream's user with ``POST
      .../typing`` and its stream's session cookie.

    What is compared with ``chat``: server CPU per delivery, where a delivery
    is a new message's or an edit's arrival on a stream (each expected once
    per stream; lost and duplicates count both). Typing notices are extra
    cost: the CPU they take (receiving, budgets, fan-out) is in the
    numerator, the notices the streams receive are not deliveries (reported
    as ``typing_received``, beside ``typing_sent``). In a room over
    ``presence_list_max`` (200 by default: the 1,000-stream fan-out) the
    server sends no typing notices, so there typing costs the server what
    receiving and checking a notice takes.
    """

    name = "chat-features"
    description = "the chat server, a tenth of the requests edits, every stream typing"
    edit_every = 10

    def __init__(self, opts: ServerOptions, redis: RedisProcess, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.typing_every_s = opts.typing_every_s


class BareTypingTarget(BareTarget):
    """The bare broadcaster, every stream's user typing as ``chat-features``'
    do (a WebSocket frame, which it reads and ignores; an SSE stream's user a
    ``POST .../typing``, which it answers 204, without a cookie: it gives no
    sessions). It cannot edit: all its requests are new messages, so it
    makes as many deliveries as ``chat-features``."""

    name = "bare-typing"
    description = "bare aiohttp broadcaster, every stream typing (benchmarks/peer_bare.py)"

    def __init__(self, opts: ServerOptions, redis: RedisProcess, workdir: str) -> None:
        super().__init__(opts, redis, workdir)
        self.typing_every_s = opts.typing_every_s


TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (
        ChatTarget,
        ChatSignedTarget,
        ChatApiTarget,
        ChatWebhooksTarget,
        ChatFeaturesTarget,
        BareTarget,
        BareTypingTarget,
        SocketioTarget,
    )
}
