"""Property-based fuzzing over real sockets: whatever a client sends, no 5xx, no crash.

Generated requests (methods, paths, query strings, headers, cookies, bodies)
and WebSocket frames (text, binary, control, reserved opcodes, bad lengths)
go to a real two-worker server as raw bytes. Every answer must be below 500
(or a closed connection, for bytes that are not HTTP at all); afterwards the
same workers are serving, nothing was logged as a traceback, and a normal
message still goes round. Examples are derandomised: the same cases on
every run, so that a failure reproduces.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .support import ServerProcess

pytestmark = pytest.mark.timeout(600)

HTTP_CASES = 3500
WS_CASES = 2000

PATHS = [
    "/",
    "/rooms/general",
    "/api/session",
    "/api/rooms/general/messages",
    "/api/rooms/fuzz/messages",
    "/api/rooms/general/online",
    "/api/rooms/general/events",
    "/api/rooms/general/ws",
    "/healthz",
    "/metrics",
    "/static/js/main.js",
    "/nowhere",
    "/api/rooms/Not%20a%20room/messages",
]
METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "BREW"]
HEADER_NAMES = [
    "Cookie",
    "Origin",
    "Host",
    "Content-Type",
    "Accept",
    "Last-Event-ID",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Content-Encoding",
    "Transfer-Encoding",
    "Expect",
    "Range",
    "If-None-Match",
    "Accept-Encoding",
    "X-Junk",
]
QUERY_KEYS = ["limit", "before", "after", "last_event_id", "since", "x"]

# Header values: printable text, odd Unicode, and bytes that are not UTF-8.
header_bytes = st.one_of(
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"chat_session=x.y",
            b"chat_session=\xc3\xbc",
            b"http://evil.example",
            b"null",
            b"websocket",
            b"Upgrade",
            b"application/json",
            b"text/plain",
            b"multipart/form-data; boundary=",
            b"gzip",
            b"chunked",
            b"100-continue",
            b"18446744073709551615-18446744073709551615",
            b"0-0",
            b"\xd9\xa1-0",
        ]
    ),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))

query_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["0-0", "1-1", "-1", "1e999", "NaN", "\u0661\u0662", "u-" + "a" * 24]),
)

bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["text", "name", "ref", "type", "x"]), children, max_size=4
            )
        ),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    path = draw(st.sampled_from(PATHS))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), query_values, max_size=3))
    if query:
        path += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_bytes), max_size=6))
    body = draw(bodies) if method in ("POST", "PUT", "PATCH") else b""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    head += [name.encode() + b": " + value for name, value in headers if name != "Host"]
    if body and not any(name == "Transfer-Encoding" for name, _ in headers):
        head.append(b"Content-Length: %d" % len(body))
    head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def exchange(port: int, data: bytes, timeout: float = 2.0, *, whole: bool = False) -> bytes:
    """Send ``data`` and read what the server answers until it closes (the
    requests say ``Connection: close``) or ``timeout`` passes in silence (a
    request whose body never came, say)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            return b""  # closed on us mid-request: an answer too
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if not whole and status_of(chunks[0]) and b"\r\n\r\n" in b"".join(chunks):
                    break  # the status and headers are all this needs
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


class WsClient:
    """A raw WebSocket connection that reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        key = os.urandom(16).hex()[:22] + "=="
        sock.sendall(
            b"GET /api/rooms/fuzz/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key.encode() + b"\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the WebSocket handshake was not answered"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:100]
        return sock

    def send(self, frame: bytes) -> list[tuple[int, bytes]]:
        """Send a frame; the frames that come back within a moment (opcode, payload)."""
        if self.sock is None:
            self.sock = self.connect()
        try:
            self.sock.sendall(frame)
        except OSError:
            self.close()
            return []
        return self.read_some()

    def read_some(self) -> list[tuple[int, bytes]]:
        assert self.sock is not None
        self.sock.settimeout(0.05)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        except OSError:
            self.close()
        else:
            self.close()  # EOF
        frames = []
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if length == 126:
                (length,) = struct.unpack(">H", data[2:4])
                offset = 4
            elif length == 127:
                (length,) = struct.unpack(">Q", data[2:10])
                offset = 10
            frames.append((opcode, data[offset : offset + length]))
            data = data[offset + length :]
        if any(opcode == 8 for opcode, _ in frames):
            self.close()
        return frames

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


ws_payloads = st.one_of(
    bodies,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["message", "ping", "x"])},
        optional={
            "text": st.one_of(st.text(max_size=50), st.integers(), st.none()),
            "ref": st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.none()),
        },
    ).map(lambda v: json.dumps(v).encode()),
)
ws_frames = st.tuples(
    st.sampled_from([1, 1, 1, 1, 2, 8, 9, 10, 0, 3, 11]),  # text mostly; reserved too
    ws_payloads,
    st.booleans(),  # fin
    st.sampled_from([True, True, True, False]),  # masked (clients must mask)
)


def fixed_cases(count: int) -> settings:
    """Hypothesis settings for ``count`` examples, the same ones on every run."""
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def worker_pids(port: int, workers: int = 2) -> set[str]:
    """The pids of the workers serving, asking until each has answered."""
    pids: set[str] = set()
    for _ in range(500):
        if len(pids) == workers:
            break
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        answer = exchange(port, request)
        for line in answer.split(b"\r\n"):
            if line.lower().startswith(b"x-chat-pid:"):
                pids.add(line.split(b":", 1)[1].strip().decode())
    return pids


def test_nothing_a_client_sends_gets_a_5xx_or_crashes_a_worker(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2)
    port = urlsplit(server.url).port
    assert port is not None
    before = worker_pids(port)
    statuses: dict[int | None, int] = {}

    @fixed_cases(HTTP_CASES)
    @given(request=http_requests())
    def http_case(request: bytes) -> None:
        status = status_of(exchange(port, request))
        statuses[status] = statuses.get(status, 0) + 1
        assert status is None or status < 500, request

    http_case()
    ws = WsClient(port)
    closes: dict[int, int] = {}

    @fixed_cases(WS_CASES)
    @given(frame=ws_frames)
    def ws_case(frame: tuple[int, bytes, bool, bool]) -> None:
        opcode, payload, fin, masked = frame
        if opcode >= 8:
            payload = payload[:125]  # control frames are short, or it is another test
        for kind, data in ws.send(ws_frame(opcode, payload, fin=fin, mask=masked)):
            if kind == 8:
                code = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
                closes[code] = closes.get(code, 0) + 1
                assert code != 1011, frame  # an internal error
            elif kind == 1:
                sent = json.loads(data)  # every text frame the server sends is JSON
                assert sent.get("type") in (
                    "message",
                    "ack",
                    "error",
                    "presence",
                    "presence_diff",
                    "gap",
                )
                if sent["type"] == "error":
                    assert sent["error"]["code"] != "internal", frame

    try:
        ws_case()
    finally:
        ws.close()
    # Most cases were HTTP the server answered (not only closed connections).
    answered = sum(n for status, n in statuses.items() if status is not None)
    assert answered >= HTTP_CASES * 0.8, statuses
    assert worker_pids(port) == before  # nobody crashed and was replaced
    # A normal message still goes round.
    body = json.dumps({"text": "still here"}).encode()
    answer = exchange(
        port,
        b"POST /api/rooms/fuzz/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    assert status_of(answer) == 201, answer[:200]
    history = exchange(
        port,
        b"GET /api/rooms/fuzz/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        whole=True,
    )
    assert b"still here" in history
    log = server.log()
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 300) : at + 3000]


HOST_CASES = 1500

# Pieces of authorities, put together in any order: brackets that do not
# close, ports out of range or not numbers, IPv6 that is not, userinfo, paths.
HOST_PIECES = ["[", "]", ":", "::1", "127.0.0.1", "localhost", "evil.example", "99999", "65535"]
HOST_PIECES += ["x", "%25", "@", "/", "..", "\u00fc", " ", "[::1]", "v1.x", "\t", "\u2028", "0"]
host_values = st.one_of(
    st.lists(st.sampled_from(HOST_PIECES), max_size=5).map("".join),
    st.text(alphabet="[]:.@%/#?0123456789abcdefx-_~", max_size=24),
    st.text(max_size=12),
).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b""))
origin_values = st.one_of(
    st.tuples(
        st.sampled_from([b"http://", b"https://", b"", b"HTTP://", b"ws://"]), host_values
    ).map(b"".join),
    st.sampled_from([b"null", b"http://[", b"http://[::1", b"http://a:99999"]),
)

# Each is malformed, not merely unknown: 400 bad_host on any path.
MALFORMED_HOSTS = [b"[::1", b"[evil]", b"a:99999", b"[::1]:x", b"]", b"[::1]]", b"\xc3\xbc", b"a b"]
KNOWN_HOSTS = [b"127.0.0.1", b"localhost:8080", b"[::1]:443", b"127.0.0.1:65535"]


@st.composite
def host_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    path = draw(st.sampled_from(PATHS))
    # A known host half the time, so that the Origin is looked at too.
    host = draw(st.one_of(st.sampled_from(KNOWN_HOSTS), host_values))
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host]
    if draw(st.booleans()):
        head.append(b"Origin: " + draw(st.one_of(origin_values, st.just(b"http://" + host))))
    if draw(st.booleans()):
        head.append(b"X-Forwarded-For: " + draw(host_values))
    body = b'{"text": "fuzz"}' if method in ("POST", "PUT") else b""
    head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def test_any_host_or_origin_gets_an_answer_below_500_and_no_traceback(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(workers=2, env={"CHAT_TRUSTED_PROXIES": "127.0.0.1"})
    port = urlsplit(server.url).port
    assert port is not None
    before = worker_pids(port)
    for host in MALFORMED_HOSTS:
        for path in ("/", "/api/session", "/api/rooms/fuzz/messages", "/healthz", "/metrics"):
            request = f"GET {path} HTTP/1.1\r\nHost: ".encode() + host + b"\r\n"
            answer = exchange(port, request + b"Connection: close\r\n\r\n", whole=True)
            assert status_of(answer) == 400, (host, path, answer[:300])
            assert b'"code": "bad_host"' in answer, answer[:300]
    statuses: dict[int | None, int] = {}

    @fixed_cases(HOST_CASES)
    @given(request=host_requests())
    def case(request: bytes) -> None:
        status = status_of(exchange(port, request))
        statuses[status] = statuses.get(status, 0) + 1
        assert status is None or status < 500, request

    case()
    assert sum(n for status, n in statuses.items() if status is not None) >= HOST_CASES * 0.8
    assert worker_pids(port) == before
    log = server.log()
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 300) : at + 3000]
    assert " ERROR " not in log, log[-3000:]
