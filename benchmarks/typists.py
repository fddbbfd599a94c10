"""Streams whose users type: each says so once every ``every_s`` seconds.

The streams take turns, one every ``every_s / len(streams)`` seconds, so
that the notices are spread evenly over the window rather than sent all
at once. A WebSocket stream sends the frame ``{"type": "typing"}`` on its
own connection; an SSE stream's user POSTs ``/api/rooms/{room}/typing``
with the session cookie its stream was given (so the notice is its
stream's user's, as a browser's would be), over a few keep-alive
connections shared by all of them (to a server that gives no session, the
bare broadcaster's twin ``bare-typing``, with no cookie).

A refused notice (an HTTP answer other than 204, or a WebSocket error
frame, which the stream's recorder counts) means the load generator went
past the server's budgets: the run reports it rather than hide it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from .clients import Subscriber

POST_CONNECTIONS = 8


class Typists:
    """The typing of ``streams``, all in one room each, for one window."""

    def __init__(
        self,
        base_url: str,
        streams: Sequence[Subscriber],
        every_s: float,
        *,
        cookies: bool = True,
    ) -> None:
        self.base_url = base_url
        self.streams = list(streams)
        self.every_s = every_s
        self.cookies = cookies  # False: the server gives no session (the bare broadcaster)
        self.sent = 0  # notices sent (frames written, POSTs answered 204)
        self.refused: Counter[str] = Counter()  # POSTs answered otherwise, or failed
        self.skipped = 0  # a stream that was reconnecting at its turn

    async def run(self, duration: float) -> None:
        """Type for ``duration`` seconds, each stream in its turn."""
        if not self.streams:
            return
        step = self.every_s / len(self.streams)
        turns = max(1, round(duration / step))
        posts: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(
            self.base_url,
            connector=aiohttp.TCPConnector(limit=POST_CONNECTIONS),
            cookie_jar=aiohttp.DummyCookieJar(),  # each POST carries its stream's cookie
            timeout=aiohttp.ClientTimeout(total=30),
        ) as http:
            start = time.perf_counter()
            for turn in range(turns):
                delay = start + turn * step - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                stream = self.streams[turn % len(self.streams)]
                if stream.kind == "ws":
                    if stream.send_typing():
                        self.sent += 1
                    else:
                        self.skipped += 1
                elif stream.cookie or not self.cookies:
                    task = asyncio.create_task(self._post(http, stream))
                    posts.add(task)
                    task.add_done_callback(posts.discard)
                else:
                    self.skipped += 1
            if posts:
                await asyncio.gather(*posts)

    async def _post(self, http: aiohttp.ClientSession, stream: Subscriber) -> None:
        headers = {"Cookie": stream.cookie.decode("latin-1")} if stream.cookie else {}
        try:
            async with http.post(f"/api/rooms/{stream.room}/typing", headers=headers) as resp:
                await resp.read()
                if resp.status == 204:
                    self.sent += 1
                else:
                    self.refused[f"HTTP {resp.status}"] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.refused[type(exc).__name__] += 1

    def figures(self, error_frames: int) -> dict[str, Any]:
        """What the window's typing came to (``error_frames``: the WebSocket
        refusals the streams received)."""
        refused = Counter(self.refused)
        if error_frames:
            refused["WebSocket error frame"] += error_frames
        return {
            "typing_sent": self.sent - error_frames,
            "typing_refused": sum(refused.values()),
            "typing_refused_kinds": dict(refused),
            "typing_skipped": self.skipped,
        }
