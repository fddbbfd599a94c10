"""The load generator's streaming clients: SSE, WebSocket and socket.io, parsed by hand.

One asyncio ``Protocol`` per connection, no task or queue per message: the
load generator shares the machine with the servers, so a client that costs
less per delivery leaves more CPU to the server it measures. Each client:

- sends its HTTP request itself (SSE ``GET .../events``, a WebSocket upgrade
  to ``.../ws``, or socket.io's ``/socket.io/?EIO=4&transport=websocket``),
  with ``Authorization: Bearer <token>`` when it signs in;
- offers ``permessage-deflate`` on WebSocket as browsers do (unless told
  not to) and inflates what a server that accepted it sends;
- answers WebSocket pings and socket.io's Engine.IO pings;
- reads each message's sequence number and send time from its text
  (``bench <seq> <perf_counter_ns>``) and its id, without decoding the JSON;
  an edit's (``message_updated``, text ``bench-edit <seq> <perf_counter_ns>``)
  the same way, with the id of its own entry in the room's stream;
- counts lost, duplicate and out-of-order deliveries, and reconnects (the chat
  server's clients resume after the last id they saw, as its page does);
- counts typing notices apart (neither deliveries nor lost), and on a
  WebSocket can say that its user is typing (:meth:`Subscriber.send_typing`;
  an SSE stream's user says it with a POST, with the session cookie its
  stream was given: :attr:`Subscriber.cookie`).

``Placement`` evens the clients out over the server's processes: a stream
that lands on a process that has its share already is closed and opened again.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import dataclasses
import math
import os
import re
import socket
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from server.core.ids import parse_id

TEXT_PREFIX = "bench "
TEXT_RE = re.compile(rb'"text": ?"bench (\d+) (\d+)"')
EDIT_PREFIX = "bench-edit "
EDIT_RE = re.compile(rb'"text": ?"bench-edit (\d+) (\d+)"')
ID_RE = re.compile(rb'"id": ?"([^"]*)"')
EVENT_ID_RE = re.compile(rb'"event_id": ?"([^"]*)"')
TYPING_FRAME = b'{"type":"typing"}'
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MAX_PLACEMENT_ATTEMPTS = 40
WS_HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: {key}\r\n"
)
DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where the streams go: the server's address, the response header that names the
    process serving a stream, whether it takes a resume id on reconnect, and the
    streams' sign-in tokens (stream ``n`` sends ``tokens[n]`` as ``Authorization:
    Bearer``; none: anonymous)."""

    host: str
    port: int
    pid_header: str
    resumes: bool = False
    tokens: tuple[str, ...] = ()

    def token(self, n: int) -> str | None:
        """Stream ``n``'s token (taken again from the start past the last), or None."""
        return self.tokens[n % len(self.tokens)] if self.tokens else None


class ProtocolError(Exception):
    """The server answered something else than a stream (an HTTP error, a refusal)."""


class Replaced(Exception):
    """The connection landed on a process that has its share already; open another."""


class Recorder:
    """What all clients of one target received, in one place."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.latencies = array.array("d")  # milliseconds, one per delivery
        self.deliveries = 0  # new messages and edits (message_updated) of the benchmark's
        self.updates = 0  # of those, edits
        self.first_copies = 0  # deliveries that were not duplicates
        self.typing = 0  # typing notices (not deliveries: nothing is lost if one is missed)
        self.error_frames = 0  # WebSocket error frames: a typing notice refused
        self.last_ns = 0
        self.other_events = 0  # presence, pings, retry hints...
        self.other_bytes = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.reconnects = 0


class Placement:
    """Spreads streams evenly over the server's processes (when enabled).

    ``landings`` counts where connections landed before any correction: how
    the server spreads them by itself.
    """

    def __init__(self, processes: int, kinds: Sequence[str], enabled: bool) -> None:
        self.quota = {k: math.ceil(n / processes) for k, n in Counter(kinds).items()}
        self.enabled = enabled
        self.placed: Counter[tuple[str, str]] = Counter()
        self.landings: Counter[str] = Counter()
        self.retries = 0

    def admit(self, kind: str, process: str, attempt: int) -> bool:
        self.landings[process] += 1
        full = self.placed[kind, process] >= self.quota[kind]
        if self.enabled and full and attempt < MAX_PLACEMENT_ATTEMPTS:
            self.retries += 1
            return False
        self.placed[kind, process] += 1
        return True

    def per_process(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (_, process), n in self.placed.items():
            totals[process] += n
        return dict(sorted(totals.items()))


def source_addresses(n_streams: int, per_address: int = 10_000) -> list[str | None]:
    """Local addresses to connect from: the default one, or 127.0.0.2, .3, ... when there
    are too many streams for one address's ephemeral ports."""
    count = math.ceil(n_streams / per_address)
    if count <= 1:
        return [None]
    return [f"127.0.0.{i + 2}" for i in range(count)]


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return str(exc)
    return type(exc).__name__


class Watch(Protocol):
    """What a scenario learns of a subscriber as it happens (see ``Subscriber.watch``)."""

    def opened(self, sub: Subscriber) -> None: ...

    def delivered(self, sub: Subscriber, sent_ns: int, now: int) -> None: ...


class Subscriber:
    """One streaming client; reconnects when its stream ends while it runs."""

    def __init__(
        self,
        kind: str,
        endpoint: Endpoint,
        room: str,
        recorder: Recorder,
        placement: Placement | None = None,
        *,
        source: str | None = None,
        deflate: bool = True,
        token: str | None = None,
        keep_cookie: bool = False,
    ) -> None:
        self.kind = kind
        self.keep_cookie = keep_cookie
        self.host, self.port = endpoint.host, endpoint.port
        self.pid_header = endpoint.pid_header.lower().encode()
        self.resumes = endpoint.resumes
        self.room = room
        self.recorder = recorder
        self.placement = placement
        self.source = source
        self.deflate_offer = deflate and kind != "sse"
        self.authorization = f"Authorization: Bearer {token}\r\n" if token else ""
        self.ordered = kind != "eio"  # socket.io's ids carry no order
        self.counts = bytearray(256)  # per sequence number: how often it arrived
        self.duplicates = 0
        self.out_of_order = 0
        self.last_key = (0, 0)
        self.last_id = b""
        self.process = ""  # the process its stream was first admitted on
        self.serving = ""  # the process serving its stream now (or last)
        self.admitted = False
        self.attempts = 0
        self.reconnects = 0
        self.close_reasons: Counter[str] = Counter()
        self.error = ""
        self.status = 0  # HTTP status of the last answer
        self.cookie = b""  # the session cookie of the last answer (name=value), if it set one
        self.connect_s = 0.0  # from the connect until the stream was open
        self.opened_at = 0.0  # time.monotonic() then
        self.open_ns = 0  # perf_counter_ns() when its current stream opened
        # Told of every open and every delivery, when set (the reload scenario's).
        self.watch: Watch | None = None
        self.ready = asyncio.Event()  # the stream is open (set once)
        self.settled = asyncio.Event()  # open, or given up
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.stream: Stream | None = None

    def start(self, attempts: int = 5, open_timeout: float = 30.0) -> None:
        self.task = asyncio.create_task(self._run(attempts, open_timeout))

    async def stop(self) -> None:
        self.stopping = True
        if self.stream is not None and self.stream.transport is not None:
            self.stream.transport.abort()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, attempts: int, open_timeout: float) -> None:
        failures = in_a_row = 0
        while not self.stopping:
            try:
                reason = await self._connect_once(open_timeout)
                in_a_row = 0
            except Replaced:
                continue
            except (OSError, TimeoutError, ProtocolError, ValueError) as exc:
                reason = describe(exc)
                in_a_row += 1
            if self.stopping:
                return
            if not self.ready.is_set():
                failures += 1
                if failures >= attempts:
                    self.error = reason
                    self.settled.set()
                    return
            else:
                self.reconnects += 1
                self.recorder.reconnects += 1
                self.close_reasons[reason] += 1
            # Again at once, then backing off while the server refuses (up to 2 s).
            await asyncio.sleep(min(2.0, 0.05 * 2 ** min(in_a_row, 6)))

    async def _connect_once(self, open_timeout: float) -> str:
        loop = asyncio.get_running_loop()
        stream = self.stream = Stream(self, loop)
        t0 = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.source is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            async with asyncio.timeout(open_timeout):
                await loop.sock_connect(sock, (self.host, self.port))
                await loop.create_connection(lambda: stream, sock=sock)
                await stream.opened
        except BaseException:
            if stream.transport is not None:
                stream.transport.abort()
            else:
                sock.close()
            raise
        self.open_ns = time.perf_counter_ns()
        if self.watch is not None:
            self.watch.opened(self)
        if not self.ready.is_set():
            self.connect_s = time.perf_counter() - t0
            self.opened_at = time.monotonic()
            self.ready.set()
            self.settled.set()
        return await stream.closed

    def request(self) -> bytes:
        room = self.room
        resume = self.last_id.decode() if self.resumes and self.last_id else ""
        if self.kind == "sse":
            path = f"/api/rooms/{room}/events" + (f"?last_event_id={resume}" if resume else "")
            extra = "Accept: text/event-stream\r\n"
        else:
            if self.kind == "ws":
                path = f"/api/rooms/{room}/ws" + (f"?since={resume}" if resume else "")
            else:
                path = "/socket.io/?EIO=4&transport=websocket"
            key = base64.b64encode(os.urandom(16)).decode()
            extra = WS_HANDSHAKE.format(key=key) + (DEFLATE_OFFER if self.deflate_offer else "")
        extra += self.authorization
        if self.keep_cookie and self.cookie:
            extra += f"Cookie: {self.cookie.decode()}\r\n"  # the same visitor again
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}\r\n".encode()

    def admit(self, process: str) -> bool:
        """The server has accepted the stream on ``process``; False to move it."""
        self.serving = process
        if self.admitted:
            return True
        self.attempts += 1
        if self.placement is not None and not self.placement.admit(
            self.kind, process, self.attempts
        ):
            return False
        self.admitted = True
        self.process = process
        return True

    def send_typing(self) -> bool:
        """Say on the WebSocket that this stream's user is typing; False when
        it cannot now (not a WebSocket, or not open)."""
        stream = self.stream
        if self.kind != "ws" or stream is None or not self.ready.is_set():
            return False
        return stream.send_text(TYPING_FRAME)

    def _in_order(self, entry_id: bytes | None) -> None:
        """A chat event with this id in the room's stream arrived: it must come
        after the last one (and a reconnect resumes after it)."""
        if not self.ordered or not entry_id:
            return
        key = parse_id(entry_id.decode()) or (0, 0)
        if key <= self.last_key:
            self.out_of_order += 1
            self.recorder.out_of_order += 1
        else:
            self.last_key, self.last_id = key, entry_id

    def on_message(self, data: bytes, now: int) -> None:
        """A chat message (its JSON, as bytes) arrived at ``now`` (perf_counter_ns)."""
        found = ID_RE.search(data)
        self._in_order(found.group(1) if found else None)
        bench = TEXT_RE.search(data)
        if bench is None:
            return  # a warm-up message
        self._count(int(bench.group(1)), int(bench.group(2)), now)

    def on_update(self, data: bytes, entry_id: bytes | None, now: int) -> None:
        """An edit (``message_updated``: the whole message, its JSON as bytes)
        arrived at ``now``; ``entry_id`` is the edit's own id in the stream."""
        self._in_order(entry_id)
        edit = EDIT_RE.search(data)
        if edit is None:
            self.recorder.other_events += 1  # not one of the benchmark's edits
            return
        self.recorder.updates += 1
        self._count(int(edit.group(1)), int(edit.group(2)), now)

    def _count(self, seq: int, sent_ns: int, now: int) -> None:
        """Delivery ``seq`` (a new message or an edit: one sequence for both)
        arrived at ``now``; it was sent at ``sent_ns``."""
        recorder = self.recorder
        counts = self.counts
        if seq >= len(counts):
            counts.extend(bytes(max(seq + 1 - len(counts), len(counts))))
        seen = counts[seq]
        if seen:
            self.duplicates += 1
            recorder.duplicates += 1
            if seen < 255:
                counts[seq] = seen + 1
        else:
            counts[seq] = 1
            recorder.first_copies += 1
        recorder.deliveries += 1
        recorder.latencies.append((now - sent_ns) / 1e6)
        recorder.last_ns = now
        if self.watch is not None:
            self.watch.delivered(self, sent_ns, now)

    def received(self, seq: int) -> bool:
        return seq < len(self.counts) and self.counts[seq] > 0


class Stream(asyncio.Protocol):
    """One connection of a subscriber: its request, the response head, then the body."""

    def __init__(self, sub: Subscriber, loop: asyncio.AbstractEventLoop) -> None:
        self.sub = sub
        self.kind = sub.kind
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._head: bytes | None = b""  # None once the response head is read
        self._raw = b""
        self._events = b""
        self._chunked = False
        self._data_left = 0
        self._crlf_left = 0
        self._fragments: list[bytes] = []
        self._compressed = False
        self._inflate: zlib._Decompress | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.sub.request())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self._head = None
            if not self._on_head(head[:end]):
                return
            data = head[end + 4 :]
            if not data:
                return
        if self.kind == "sse":
            self._sse_body(data, now)
        else:
            self._ws_body(data, now)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        reason = describe(exc) if exc is not None else "closed by the server"
        self._fail_open(ProtocolError(f"connection closed before the stream opened ({reason})"))
        if not self.closed.done():
            self.closed.set_result(reason)

    def _fail_open(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: the caller may be gone already

    def _open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def _close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.close()

    # -- the response head

    def _on_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(None, 2)
        status = self.sub.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status != (200 if self.kind == "sse" else 101):
            self._fail_open(ProtocolError(f"HTTP {status}"))
            self._close(f"HTTP {status}")
            return False
        if not self.sub.admit(headers.get(self.sub.pid_header, b"?").decode()):
            self._fail_open(Replaced())
            self._close("replaced")
            return False
        self._chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        cookie = headers.get(b"set-cookie")
        if cookie:
            self.sub.cookie = cookie.split(b";", 1)[0]
        if b"permessage-deflate" in headers.get(b"sec-websocket-extensions", b""):
            self._inflate = zlib.decompressobj(-15)
        if self.kind != "eio":
            self._open()  # socket.io: once in the room (its "40" packet)
        return True

    # -- SSE

    def _sse_body(self, data: bytes, now: int) -> None:
        if self._chunked:
            buf = self._raw + data if self._raw else data
            pos, end, parts = 0, len(buf), []
            while pos < end:
                if self._data_left:
                    take = min(self._data_left, end - pos)
                    parts.append(buf[pos : pos + take])
                    pos += take
                    self._data_left -= take
                elif self._crlf_left:
                    take = min(self._crlf_left, end - pos)
                    pos += take
                    self._crlf_left -= take
                else:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                    pos = eol + 2
                    if size == 0:
                        self._close("end of the response")
                        break
                    self._data_left, self._crlf_left = size, 2
            self._raw = buf[pos:]
            data = b"".join(parts)
        events = self._events + data if self._events else data
        if b"\r" in events:
            events = events.replace(b"\r\n", b"\n")
        if b"\n\n" not in events:
            self._events = events
            return
        *complete, self._events = events.split(b"\n\n")
        for event in complete:
            self._sse_event(event, now)

    def _sse_event(self, event: bytes, now: int) -> None:
        """One whole SSE event (its lines, without the blank line after them)."""
        sub = self.sub
        if event.startswith(b"event: message\n"):
            data = _sse_field(event, b"data")
            if data is not None:
                sub.on_message(data, now)
                return
        elif event.startswith(b"event: message_updated\n"):
            data = _sse_field(event, b"data")
            if data is not None:
                sub.on_update(data, _sse_field(event, b"id"), now)
                return
        elif event.startswith(b"event: typing\n"):
            sub.recorder.typing += 1
            return
        sub.recorder.other_events += 1
        sub.recorder.other_bytes += len(event) + 2

    # -- WebSocket

    def _ws_body(self, data: bytes, now: int) -> None:
        buf = self._raw + data if self._raw else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            size, header = b1 & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            stop = pos + header + size
            if stop > end:
                break
            payload = buf[pos + header : stop]
            pos = stop
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                self._ws_data(b0, opcode, payload, now)
            elif opcode == 9:
                self._send_ws(0xA, payload)  # pong
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send_ws(0x8, payload[:2])
                self._fail_open(ProtocolError(f"closed with {code}"))
                self._close(f"WebSocket close {code}")
                return
        self._raw = buf[pos:]

    def _ws_data(self, b0: int, opcode: int, payload: bytes, now: int) -> None:
        """A data frame: a whole message, or a fragment of one (kept until the last)."""
        if opcode:
            self._compressed = bool(b0 & 0x40)
        if not b0 & 0x80 or self._fragments:  # fragmented
            self._fragments.append(payload)
            if not b0 & 0x80:
                return
            payload, self._fragments = b"".join(self._fragments), []
        if self._compressed and self._inflate is not None:
            payload = self._inflate.decompress(payload + b"\x00\x00\xff\xff")
        self._on_text(payload, now)

    def send_text(self, payload: bytes) -> bool:
        """Send a WebSocket text frame; False when the connection is closing."""
        if self.transport is None or self.transport.is_closing():
            return False
        self._send_ws(0x1, payload)
        return True

    def _send_ws(self, opcode: int, payload: bytes) -> None:
        """A masked client frame (RFC 6455 5.3)."""
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        else:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        mask = os.urandom(4)
        if size:
            key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")
        self.transport.write(header + mask + payload)

    def _on_text(self, text: bytes, now: int) -> None:
        if self.kind == "ws":
            self._chat_frame(text, now)
            return
        # socket.io: Engine.IO packet type, then Socket.IO packet type.
        if text.startswith(b'42["message"'):
            self.sub.on_message(text, now)
        elif text == b"2":
            self._send_ws(0x1, b"3")  # Engine.IO ping -> pong
        elif text.startswith(b"0"):
            self._send_ws(0x1, b'40{"room":"' + self.sub.room.encode() + b'"}')
        elif text.startswith(b"40"):
            self._open()  # the connect handler put us in the room
        elif text.startswith(b"44"):
            self._fail_open(ProtocolError("socket.io refused the connection"))
            self._close("socket.io CONNECT_ERROR")
        elif text in (b"1", b"41"):
            self._close("socket.io close")
        else:
            self.sub.recorder.other_events += 1
            self.sub.recorder.other_bytes += len(text)

    def _chat_frame(self, text: bytes, now: int) -> None:
        """A text frame of the chat server's WebSocket."""
        sub = self.sub
        if text.startswith(b'{"type":"message"'):
            sub.on_message(text, now)
        elif text.startswith(b'{"type":"message_updated"'):
            found = EVENT_ID_RE.search(text)
            sub.on_update(text, found.group(1) if found else None, now)
        elif text.startswith(b'{"type":"typing"'):
            sub.recorder.typing += 1
        else:
            if text.startswith(b'{"type":"error"'):
                sub.recorder.error_frames += 1
            sub.recorder.other_events += 1
            sub.recorder.other_bytes += len(text)


def _sse_field(event: bytes, name: bytes) -> bytes | None:
    """The value of an SSE event's field (its first line of that name), or None."""
    start = event.find(b"\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 2
    if event[start : start + 1] == b" ":
        start += 1
    stop = event.find(b"\n", start)
    return event[start : stop if stop >= 0 else None]


async def open_all(
    subs: Sequence[Subscriber],
    concurrency: int,
    within_s: float,
    *,
    attempts: int = 5,
    open_timeout: float = 30.0,
) -> list[Subscriber]:
    """Start them, at most ``concurrency`` connecting at once; the ones that made it."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(sub: Subscriber) -> None:
        async with gate:
            sub.start(attempts, open_timeout)
            await sub.settled.wait()

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            await asyncio.gather(*(one(s) for s in subs))
    return [s for s in subs if s.ready.is_set() and not s.error]


async def stop_all(subs: Sequence[Subscriber]) -> None:
    await asyncio.gather(*(s.stop() for s in subs), return_exceptions=True)
