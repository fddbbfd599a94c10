"""``chat-server webhooks``: the dead letters of the webhooks, listed and replayed.

``chat-server webhooks list`` prints one line per dead letter (an event
whose delivery gave up after ``webhook_retry_for_s``); ``chat-server
webhooks replay [--id ID ...]`` writes them (all, or those named) back to
their rooms' outboxes, where the running servers deliver them again with
their ids and a fresh retry period. The Redis is the server's: ``--redis-url``,
else the configured one (environment or ``--config``), else the embedded
Redis in ``data_dir`` of a server running on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..common import redisurl
from ..common.config import ConfigError, load
from ..core.webhook import KINDS
from ..store import connect, failures
from ..store.clients import redis_client
from ..store.dead_letters import DeadLetters
from ..store.outbox import Outbox

EXIT_USAGE = 2


class _Refused(Exception):
    """Bad arguments or settings: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise _Refused(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _Parser(
        prog="chat-server webhooks",
        description="List or replay the webhook events whose delivery gave up.",
    )
    parser.add_argument("action", choices=("list", "replay"))
    parser.add_argument(
        "--id", action="append", dest="ids", metavar="ID", help="replay only this event; repeatable"
    )
    parser.add_argument("--redis-url", help="the server's Redis [as the server finds it]")
    parser.add_argument("--config", help="TOML config file (as the server's)")
    return parser.parse_args(argv)


def redis_url_of(args: argparse.Namespace) -> str:
    """The Redis the servers use: given, configured, or the embedded one in ``data_dir``."""
    config = load({"config": args.config})
    url = args.redis_url or config.redis_url
    if url:
        try:
            url = redisurl.validate(url)
        except redisurl.BadRedisURL as exc:
            raise _Refused(f"--redis-url: {exc}") from None
        if redisurl.kind_of(url) == "single" and not url.startswith("unix:"):
            client = connect.blocking_client(url, socket_connect_timeout=2, socket_timeout=2)
            try:
                if connect.is_cluster_node(client):
                    url = redisurl.validate(redisurl.cluster_url(url))
            finally:
                client.close()
        return url
    socket_path = os.path.abspath(os.path.join(config.data_dir, "redis", "redis.sock"))
    if not os.path.exists(socket_path):
        raise _Refused(f"no Redis given, and no embedded Redis running at {socket_path}")
    return "unix://" + socket_path


async def run(args: argparse.Namespace, url: str) -> int:
    async with redis_client(url) as redis:
        dead = DeadLetters(redis, Outbox(redis, KINDS))
        if args.action == "list":
            for letter in await dead.all():
                print(_line(letter))
            return 0
        replayed = await dead.replay(set(args.ids) if args.ids else None)
        for letter in replayed:
            print(f"replayed {letter['id']} ({letter['type']} in {letter['room']})")
        missing = set(args.ids or ()) - {letter["id"] for letter in replayed}
        for event_id in sorted(missing):
            print(f"chat-server webhooks: no dead letter {event_id}", file=sys.stderr)
        print(f"{len(replayed)} events replayed")
        return 1 if missing else 0


def _line(letter: dict[str, Any]) -> str:
    created = datetime.datetime.fromtimestamp(float(letter.get("created", 0)), datetime.UTC)
    return (
        f"{letter.get('id')}  {letter.get('type')}  {letter.get('room')}  "
        f"{created.isoformat(timespec='seconds')}  tries {letter.get('tries')}  "
        f"{letter.get('error')}"
    )


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
        url = redis_url_of(args)
        return asyncio.run(run(args, url))
    except (_Refused, ConfigError) as exc:
        print(f"chat-server webhooks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except failures.FAILURES as exc:
        print(f"chat-server webhooks: error: Redis failed: {exc}", file=sys.stderr)
        return 1
