"""Fixtures: a private Redis for the whole run, a clean database per test, the app in-process."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.sync_api import sync_playwright

from harness.redis_servers import ClusterProcesses, RedisProcess
from server.common.config import Config
from server.store.clients import redis_client, session_store
from server.web.app import create_app

from . import openapi_check
from .browser import Tab
from .support import CHROMIUM_ARGS, ServerProcess, chromium_path, cluster_processes, running_server

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # In-process tests run on both event loops; the process tests' own loop is
    # only a client (the server's loop is chosen by its --loop flag).
    if item.get_closest_marker("processes") or item.get_closest_marker("browser"):
        return {"asyncio": asyncio.new_event_loop}
    return LOOPS


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess | None]:
    if os.environ.get("CHAT_TEST_REDIS_URL"):
        yield None
        return
    server = RedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisProcess | None) -> Iterator[str]:
    """A Redis URL with an empty database for this test."""
    import redis

    url = os.environ.get("CHAT_TEST_REDIS_URL") or (redis_server.url if redis_server else "")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def persistent_redis() -> Iterator[RedisProcess]:
    """A Redis of this test's own, which it may stop and start again: every
    write is fsync'd, so a restart loses nothing."""
    server = RedisProcess(persistent=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterProcesses]:
    """A private Redis Cluster (three primaries, a replica each) for the run."""
    cluster = cluster_processes()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def cluster_url(redis_cluster: ClusterProcesses) -> str:
    """The URL of one node of the run's Redis Cluster, emptied for this test."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(params=["redis", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis, then a Redis Cluster: the test runs on each."""
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
def make_config(tmp_path: Any) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "workers": 1,
            "data_dir": str(tmp_path / "data"),
            "session_secret": "test-secret",
            "heartbeat_s": 0.2,
            "idle_timeout_s": 5.0,
            # Tests post fast; the rate limit has tests of its own.
            "rate_limit_per_s": 10_000.0,
            "rate_limit_burst": 10_000,
            # Every test client comes from one address; budgets per address
            # have tests of their own.
            "address_sessions_per_min": 1_000_000,
            "address_rate_limit_per_s": 1_000_000.0,
            "address_rate_limit_burst": 1_000_000,
            "address_streams": 1_000_000,
            "address_connections": 1_000_000,
            "address_rooms_per_min": 1_000_000,
        }
        values.update(overrides)
        return Config(**values)

    return make


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    async with redis_client(redis_url) as client:
        yield client


@pytest.fixture
async def make_app(
    redis_url: str, make_config: Callable[..., Config]
) -> AsyncIterator[Callable[..., Any]]:
    """Build the app exactly as a worker does, on the test's Redis."""
    stack: list[Any] = []

    async def make(**overrides: Any) -> web.Application:
        config = make_config(**overrides)
        client_cm = redis_client(redis_url)
        store_cm = session_store(redis_url, config, config.session_secret)
        client = await client_cm.__aenter__()
        store = await store_cm.__aenter__()
        stack.extend([client_cm, store_cm])
        return create_app(config, redis=client, session_storage=store, redis_url=redis_url)

    yield make
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture(autouse=True)
def check_openapi(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a test marked ``openapi``, the clients of ``client`` and
    :func:`tests.support.user` check every response of a documented path
    against the document (see :mod:`tests.openapi_check`)."""
    openapi_check.Checking.on = request.node.get_closest_marker("openapi") is not None
    yield
    openapi_check.Checking.on = False


@pytest.fixture
async def client(
    make_app: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> TestClient[Any, Any]:
    app = await make_app()
    return await aiohttp_client(
        app,
        server_kwargs={"handler_cancellation": True},
        middlewares=openapi_check.middlewares(),
    )


@pytest.fixture
def start_server(redis_url: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m server`` processes (on the test's Redis, unless told
    another ``redis_url``); killed at the end."""
    with contextlib.ExitStack() as stack:

        def start(**kwargs: Any) -> ServerProcess:
            kwargs.setdefault("redis_url", redis_url)
            return stack.enter_context(running_server(**kwargs))

        yield start


@pytest.fixture
def tabs() -> Iterator[list[Tab]]:
    """The pages a browser test opened (it appends each): closed at its end,
    before the browser and the server."""
    opened: list[Tab] = []
    yield opened
    for tab in opened:
        tab.context.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (the browser tests')."""
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
