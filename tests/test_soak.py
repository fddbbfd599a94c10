"""The short soak: two identical rounds of churn, each with a fault, must leave a
settled server holding what it held after the first (see benchmarks/soak_check.py),
and steady subscribers must receive every message once, in order."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from benchmarks.soak_check import OTHER, Settled, kind_of, verdict
from benchmarks.soak_load import settle
from harness.processes import ROOT
from server.store import keys

from .soak import Population
from .support import ServerProcess, worker_pids

ROOMS = ["soak-a", "soak-b", "soak-c"]
WORKERS = 2
LEAK_PLANT = str(Path(__file__).parent / "leak_plant")


async def reload(server: ServerProcess) -> None:
    """SIGHUP, and wait until a new generation of workers serves."""
    old = set((await worker_pids(server.url)).values())
    server.signal(signal.SIGHUP)
    async with asyncio.timeout(15):
        while set((await worker_pids(server.url)).values()) & old:
            await asyncio.sleep(0.1)


async def kill_one(server: ServerProcess) -> None:
    """SIGKILL worker 0, and wait until the supervisor's replacement serves."""
    old = (await worker_pids(server.url))[0]
    os.kill(old, signal.SIGKILL)
    async with asyncio.timeout(15):
        while (await worker_pids(server.url)).get(0) in (None, old):
            await asyncio.sleep(0.1)


async def soak(
    server: ServerProcess, redis_url: str, round_s: float, faults: bool
) -> tuple[list[tuple[Settled, bool]], Population]:
    """Two rounds (a reload in the first, a killed worker in the second, when
    ``faults``), each followed by a reading once settled (and whether it did,
    within the time allowed); every message delivered."""
    redis = aioredis.Redis.from_url(redis_url)
    population = Population(server.url, ROOMS)
    readings = []
    try:
        await population.start()
        for fault in (reload, kill_one) if faults else (None, None):
            run_fault = (lambda f=fault: f(server)) if fault else None
            await population.round(round_s, run_fault)
            await population.delivered_everything()
            readings.append(await settle(server.url, redis, len(population.steady), WORKERS))
    finally:
        await population.close()
        await redis.aclose()
    return readings, population


def report(readings: list[tuple[Settled, bool]], population: Population) -> str:
    rounds = "\n".join(
        f"after round {i + 1} ({'settled' if settled else 'NOT SETTLED'}): {r.describe()}"
        for i, (r, settled) in enumerate(readings)
    )
    return f"{rounds}\noutcomes: {dict(sorted(population.outcomes.items()))}"


def test_every_key_the_server_names_has_a_kind() -> None:
    named = []
    for name, function in vars(keys).items():
        if not (callable(function) and name.endswith(("_key", "_keys", "_prefix"))):
            continue
        args = ["0" if p != "shard" else 0 for p in inspect.signature(function).parameters]
        made = function(*args)
        named += made if isinstance(made, list) else [made]
    named += [keys.DEAD_LETTERS_KEY, keys.SWEEP_LOCK_KEY]
    assert len(named) > 20
    assert {key: kind_of(key) for key in named if kind_of(key) == OTHER} == {}


def test_the_verdict_allows_ten_percent_and_the_slack_and_names_the_rest() -> None:
    first = Settled({"1": 20, "2": 20}, {"1": 50, "2": 50}, {}, 6, {"presence": 10, "rooms": 3})
    same_sums = Settled({"3": 10, "2": 34}, {"3": 60, "2": 50}, {}, 6, {"presence": 11})
    assert verdict(first, same_sums) == []
    grown = Settled({"3": 40, "2": 20}, {"3": 100, "2": 50}, {}, 7, {"presence": 12, "rooms": 3})
    assert [p.split(":")[0] for p in verdict(first, grown)] == [
        "tasks",
        "fds",
        "connections",
        "redis keys (presence)",
    ]
    assert verdict(first, grown, {"presence": 1}) == verdict(first, grown)[:3]
    # Gauges never sampled read 0: nothing to compare, which is no pass.
    unsampled = Settled({"1": 0, "2": 0}, {"1": 0, "2": 0}, {}, 6, {})
    assert verdict(unsampled, unsampled) == [
        "first reading: no sample from workers ['1', '2']",
        "second reading: no sample from workers ['1', '2']",
    ]
    assert verdict(Settled({}, {}, {}, 6), first)[0].startswith("first reading")


@pytest.mark.processes
@pytest.mark.soak
@pytest.mark.timeout(150)
async def test_two_identical_rounds_of_churn_and_faults_leave_nothing_behind(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    server = start_server(workers=WORKERS)
    readings, population = await soak(server, redis_url, round_s=20, faults=True)
    (first, settled_first), (second, settled_second) = readings
    print(report(readings, population))
    churned = sum(n for what, n in population.outcomes.items() if what[-3:] in ("200", "101"))
    assert churned >= 100, report(readings, population)
    # Which workers hold a room depends on where the kernel put its steady
    # streams, which a reload and a kill shuffle: from one to every worker.
    holds = {"room holds": len(ROOMS) * (WORKERS - 1)}
    assert verdict(first, second, holds) == [], report(readings, population)
    assert settled_first and settled_second, report(readings, population)


@pytest.mark.processes
@pytest.mark.soak
@pytest.mark.timeout(90)
async def test_the_verdict_reports_a_task_and_a_descriptor_leaked_per_connection(
    start_server: Callable[..., ServerProcess], redis_url: str
) -> None:
    # Planted from outside: a sitecustomize on the workers' path only.
    path = os.pathsep.join([LEAK_PLANT, ROOT])
    server = start_server(workers=WORKERS, env={"PYTHONPATH": path})
    readings, population = await soak(server, redis_url, round_s=8, faults=False)
    (first, _), (second, _) = readings
    problems = [p.split(":")[0] for p in verdict(first, second)]
    assert problems == ["tasks", "fds"], report(readings, population)
