"""The soak's verdict: what a settled server holds after one round of churn, and
whether a second, identical round left it holding more.

A :class:`Settled` reading is taken once churn has paused and the numbers
stopped moving: the tasks and open descriptors of every worker (from their
``/metrics`` gauges; a reload or a killed worker changes the processes, so
the sums are compared), the streams open, and the Redis keys by kind (one
``SCAN``, each key put in the first kind whose pattern, built from
:mod:`server.store.keys`, it matches). :func:`verdict` compares two readings
and names whatever grew past its allowance; the short soak
(``tests/test_soak.py``) and the test that plants a leak call the same
function.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.process.cli import SECRET_KEY
from server.process.redis_check import PROBE_KEY
from server.store import keys, room_registry
from server.store.session_store import COOKIE_NAME

# The growth allowed beyond the first reading, as a share of it.
GROWTH = 0.10

# And a few more, whatever the first reading was:
# - tasks: 2 per worker. The sums came out equal in every run so far (25
#   and 25, however the streams were placed), but a worker samples while
#   the reading's own scrape may be in flight there, beside the task of the
#   keep-alive connection it came on.
# - descriptors: 8 per worker. Each worker's Redis pool keeps a connection
#   for every command that was ever in flight at once (30 streams closing
#   together grew a pair of pools by 26), and a round's bursts are not the
#   same twice; the sums varied by up to 9 between rounds.
# - streams and keys: none. Once settled, the streams are exactly the
#   steady subscribers, and every bounded kind of key is a function of the
#   fixed users, rooms and workers the soak runs with; but for where the
#   kernel put the steady streams, which the caller allows for (see
#   :func:`verdict`'s ``key_slack``).
SLACK = {"tasks": 4, "fds": 16, "connections": 0}

W = "*"  # a key's part, whatever it is

# Kinds of keys, first match wins (more specific patterns first).
KEY_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sessions", (f"{COOKIE_NAME}_*",)),
    ("idempotency", (keys.idempotency_record_key(W, W, W), keys.key_used_in(W, W))),
    ("typing", (keys.typing_key(W, W),)),
    (
        "webhooks",
        (
            keys.outbox_owner_key(W),
            keys.outbox_tries_key(W),
            keys.outbox_key(W),
            keys.due_key(0).replace("-0}", "-*}"),
            keys.DEAD_LETTERS_KEY,
            keys.SWEEP_LOCK_KEY,
        ),
    ),
    # Which workers hold a room: one key per room and worker with streams there.
    ("room holds", (keys.held_prefix(W) + W,)),
    ("presence", tuple(keys.room_keys(W, W))),
    (
        "rooms",
        (
            keys.stream_key(W),
            keys.changes_key(W),
            keys.members_key(W),
            room_registry.NAMES_KEY,
            room_registry.ACTIVE_KEY,
        ),
    ),
    ("connection counts", (keys.user_connections_key(W), keys.address_connections_key(W))),
    ("budgets", (keys.budget_key(W, W),)),
    (
        "users",
        (
            keys.name_key(W),
            keys.bans_key(W),
            keys.user_rooms_key(W),
            keys.read_positions_key(W),
        ),
    ),
    ("server", (SECRET_KEY, PROBE_KEY)),
)
# What none of the patterns match: a kind of key the soak does not know yet.
OTHER = "other"
# Kinds whose count, once settled, is not a function of the soak's fixed
# population: none today (the soak's users are a fixed set; no idempotency
# keys are sent; budgets and typing marks expire within seconds).
UNBOUNDED: frozenset[str] = frozenset()


def kind_of(key: str) -> str:
    for kind, patterns in KEY_KINDS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return kind
    return OTHER


def count_kinds(names: list[str]) -> dict[str, int]:
    counts = {kind: 0 for kind, _ in KEY_KINDS} | {OTHER: 0}
    for name in names:
        counts[kind_of(name)] += 1
    return counts


@dataclass(frozen=True)
class Settled:
    """One reading of a settled server (per-worker values by pid)."""

    tasks: Mapping[str, float]
    fds: Mapping[str, float]
    rss_bytes: Mapping[str, float]
    connections: float
    keys: Mapping[str, int] = field(default_factory=dict)

    def totals(self) -> dict[str, float]:
        return {
            "tasks": sum(self.tasks.values()),
            "fds": sum(self.fds.values()),
            "connections": self.connections,
        }

    def describe(self) -> str:
        rss_mb = {pid: round(v / 2**20, 1) for pid, v in self.rss_bytes.items()}
        return (
            f"tasks {dict(self.tasks)}, fds {dict(self.fds)}, rss MiB {rss_mb}, "
            f"connections {self.connections:g}, keys {dict(self.keys)}"
        )


def allowance(first: float, slack: float) -> float:
    return first * (1 + GROWTH) + slack


def verdict(
    first: Settled, second: Settled, key_slack: Mapping[str, int] | None = None
) -> list[str]:
    """What grew from ``first`` to ``second`` past its allowance (empty: nothing);
    ``key_slack``: more keys allowed of some kinds (none of the others)."""
    problems = []
    for name, reading in (("first", first), ("second", second)):
        # A worker always has a task (the heartbeat's own tick) and descriptors:
        # a zero is a gauge never sampled, which would make any growth vanish.
        unsampled = sorted(
            pid
            for pid in {*reading.tasks, *reading.fds}
            if reading.tasks.get(pid, 0) <= 0 or reading.fds.get(pid, 0) <= 0
        )
        if unsampled or not reading.tasks:
            problems.append(f"{name} reading: no sample from workers {unsampled or 'at all'}")
    before, after = first.totals(), second.totals()
    for name, slack in SLACK.items():
        if after[name] > allowance(before[name], slack):
            problems.append(f"{name}: {before[name]:g} -> {after[name]:g} (allowed {slack:+g})")
    for kind, count in second.keys.items():
        if kind in UNBOUNDED:
            continue
        was = first.keys.get(kind, 0)
        if count > allowance(was, (key_slack or {}).get(kind, 0)):
            problems.append(f"redis keys ({kind}): {was} -> {count}")
    return problems
