"""Signed-in streams end with their sign-in: a warning first, then the end,
unless a newer token came. Checked by the heartbeat, which visits every
subscription once per interval: no timer per connection."""

from __future__ import annotations

import asyncio
import logging
import time

from ..core.close_reason import CloseReason
from ..core.identity import Expiry
from ..core.model import AuthExpiring
from ..core.subscription import Subscription
from ..store import failures

log = logging.getLogger(__name__)

WARN_BEFORE_S = 60  # auth_expiring this long before exp


class Expiries:
    """What the heartbeat does for a signed-in stream it visits."""

    def __init__(self, leeway_s: float) -> None:
        self.leeway_s = leeway_s
        self._renewing: set[asyncio.Task[None]] = set()

    def check(self, sub: Subscription, expiry: Expiry, now: float) -> None:
        """At ``now`` (Unix time): warn the client once when its sign-in
        ends within WARN_BEFORE_S, end the stream once it has (exp and the
        leeway), unless a newer expiry is found where the sign-in is kept."""
        if expiry.renewing:
            return
        ended = now > expiry.at + self.leeway_s
        if not ended and (expiry.warned or now < expiry.at - WARN_BEFORE_S):
            return
        if expiry.renew is not None:
            # Refreshed elsewhere (POST /api/auth, perhaps on another worker)?
            expiry.renewing = True
            task = asyncio.get_running_loop().create_task(self._renew(sub, expiry, ended))
            self._renewing.add(task)
            task.add_done_callback(self._renewing.discard)
            return
        self._act(sub, expiry, ended)

    async def _renew(self, sub: Subscription, expiry: Expiry, ended: bool) -> None:
        assert expiry.renew is not None
        try:
            newer = await expiry.renew()
        except failures.FAILURES as exc:
            log.debug("could not read a stream's sign-in: %s", exc)
            newer = None  # (its end waits for the next visit)
            if ended:
                expiry.renewing = False
                return
        expiry.renewing = False
        if newer is not None:
            expiry.extend(newer)
        if not sub.closed:
            self._act(sub, expiry, time.time() > expiry.at + self.leeway_s)

    @staticmethod
    def _act(sub: Subscription, expiry: Expiry, ended: bool) -> None:
        if ended:
            sub.close(CloseReason.AUTH_EXPIRED)
        elif not expiry.warned and time.time() >= expiry.at - WARN_BEFORE_S:
            expiry.warned = True
            sub.deliver(AuthExpiring(expiry.at))

    async def close(self) -> None:
        for task in list(self._renewing):
            task.cancel()
        await asyncio.gather(*self._renewing, return_exceptions=True)
