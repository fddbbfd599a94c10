"""The deployment the README shows: Debian's nginx, with the repository's own
``deploy/nginx.conf``, in front of two chat-server instances on one Redis, on
a port that is not 80. A real browser chats through it over SSE and over
WebSocket; cookie-less clients behind it get budgets of their own by the
address nginx forwards, and cannot choose it."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from playwright.sync_api import expect

from harness.processes import ROOT, free_port, stop_process
from server.store.broker import Broker

from .support import ServerProcess, debian_program, drain, stalled_client

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]

CONFIG = Path(ROOT) / "deploy" / "nginx.conf"
# The address nginx connects to the instances from: the one proxy they trust.
PROXY = "127.0.0.1"


def site(upstreams: list[int], port: int) -> str:
    """deploy/nginx.conf with its upstream servers and its port replaced, nothing else."""
    text = CONFIG.read_text()
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    text, replaced = re.subn(
        r"(?m)^    server 127\.0\.0\.1:\d+;\n(?:    server .*\n)*", servers, text
    )
    assert replaced == 1, "deploy/nginx.conf: the upstream block moved"
    text, replaced = re.subn(r"(?m)^    listen \d+;", f"    listen 127.0.0.1:{port};", text)
    assert replaced == 1, "deploy/nginx.conf: the listen line moved"
    return text


class Nginx:
    """nginx in the foreground, one process, everything under a directory of its own."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (prefix / "chat.conf").write_text(site(upstreams, self.port))
        temp = "".join(
            f"    {kind}_temp_path {prefix}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n"
            # (warn: nginx says when it buffers a response to a temporary file.)
            f"error_log {prefix}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp}"
            f"    include {prefix}/chat.conf;\n}}\n"
        )
        with open(prefix / "error.log", "ab") as log:
            self.proc = subprocess.Popen(
                [debian_program("nginx"), "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    error = (
                        (prefix / "error.log").read_text()
                        if (prefix / "error.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"nginx did not start: {error}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def deployment(
    start_server: Callable[..., ServerProcess], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Nginx, list[ServerProcess]]]:
    env = {"CHAT_TRUSTED_PROXIES": PROXY, **getattr(request, "param", {})}
    instances = [start_server(workers=2, env=env) for _ in range(2)]
    ports = [int(server.url.rsplit(":", 1)[1]) for server in instances]
    nginx = Nginx(tmp_path, ports)
    try:
        yield nginx, instances
    finally:
        nginx.stop()


@pytest.mark.browser
def test_a_browser_chats_through_nginx_over_sse_and_websocket(
    deployment: tuple[Nginx, list[ServerProcess]], browser: Any
) -> None:
    nginx, _ = deployment
    pages = {}
    for transport in ("sse", "ws"):
        context = browser.new_context()
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.goto(f"{nginx.url}/?transport={transport}")
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
        pages[transport] = page
    for sender, reader in (("sse", "ws"), ("ws", "sse")):
        text = f"through nginx from {sender} {time.monotonic_ns()}"
        pages[sender].locator("#input").fill(text)
        pages[sender].locator("#input").press("Enter")
        expect(pages[reader].locator("#messages li", has_text=text)).to_have_count(1)
        expect(pages[sender].locator("#messages li", has_text=text)).to_have_count(1)


@pytest.mark.parametrize("deployment", [{"CHAT_ADDRESS_SESSIONS_PER_MIN": "2"}], indirect=True)
async def test_clients_behind_nginx_have_budgets_by_their_own_address(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    nginx, _ = deployment

    async def new_session(source: str, forwarded: str | None = None) -> int:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        async with (
            aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.get(f"{nginx.url}/api/session", headers=headers) as resp,
        ):
            return resp.status

    # Two new sessions a minute for each client address, whichever instance answers.
    assert [await new_session("127.0.0.2") for _ in range(3)] == [200, 200, 429]
    # A header the client wrote itself buys nothing: nginx appends the real address.
    assert await new_session("127.0.0.2", forwarded="203.0.113.7") == 429
    # Another address has its own budget.
    assert [await new_session("127.0.0.3") for _ in range(2)] == [200, 200]


async def test_a_page_the_client_does_not_read_is_taken_off_the_instance_by_nginx(
    deployment: tuple[Nginx, list[ServerProcess]], redis_url: str
) -> None:
    """Plain responses are buffered: nginx reads an 8 MB history page from the
    instance at once, into a temporary file, though its client reads nothing
    (the kernel would take 4 MB of it: nginx's socket buffer)."""
    nginx, _ = deployment
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        broker = Broker(redis, history_len=1000)
        for n in range(200):
            await broker.publish("big", "u-1", "Ann", f"{n:05d}" + "z" * 39995)
    finally:
        await redis.aclose()
    port = int(nginx.url.rsplit(":", 1)[1])
    request = (
        b"GET /api/rooms/big/messages?limit=200 HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    sock = stalled_client(port, request)
    try:
        log = nginx.prefix / "error.log"
        async with asyncio.timeout(10):
            while "buffered to a temporary file" not in log.read_text():
                await asyncio.sleep(0.05)
        # The client, reading at last, gets all of it.
        data, closed = await asyncio.to_thread(drain, sock, 5)
        assert closed, "nginx did not end the answer"
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    if b"chunked" in head.lower():
        body = dechunk(body)
    messages = json.loads(body)["messages"]
    assert [m["text"][:5] for m in messages] == [f"{n:05d}" for n in range(200)]


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body."""
    payload = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if not length:
            return payload
        payload += rest[:length]
        body = rest[length + 2 :]


async def test_nginx_caps_the_requests_in_progress_of_a_client_address(
    deployment: tuple[Nginx, list[ServerProcess]],
) -> None:
    """The instances trust nginx and so count none of its connections: nginx
    caps each client address at 200 requests in progress (streams included)."""
    nginx, _ = deployment
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
    async with aiohttp.ClientSession(nginx.url, connector=connector) as http:
        streams = []
        try:
            for _ in range(200):
                streams.append(await http.get("/api/rooms/capped/events"))
                assert streams[-1].status == 200
            async with http.get("/api/rooms/capped/messages") as resp:
                assert resp.status == 429
        finally:
            for stream in streams:
                stream.close()
    # Another address is not affected.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(nginx.url, connector=connector) as http:
        async with http.get("/api/rooms/capped/messages") as resp:
            assert resp.status == 200
