"""What is reached for in the application, as typed application keys.

Only what outlives a request needs a key: the worker (the heartbeat, the
hub it tells why connections close, the metrics), and the tests that look
inside a running app. Handlers are not given the app: they are methods of
objects built with their services (see :func:`server.web.app.create_app`).

A leaf: the types are named for the type checker only, so that any module
may import this one without importing the rest of the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..common.config import Config
    from ..common.metrics import Metrics
    from ..core.hub import Hub
    from ..core.presence import Announcer
    from .heartbeat import Heartbeat
    from .messages import Messages
    from .moderation import Moderation
    from .signin import SignIn

CONFIG: web.AppKey[Config] = web.AppKey("config")
HUB: web.AppKey[Hub] = web.AppKey("hub")
ANNOUNCER: web.AppKey[Announcer] = web.AppKey("announcer")
HEARTBEAT: web.AppKey[Heartbeat] = web.AppKey("heartbeat")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
SIGN_IN: web.AppKey[SignIn] = web.AppKey("sign_in")
MODERATION: web.AppKey[Moderation] = web.AppKey("moderation")
MESSAGES: web.AppKey[Messages] = web.AppKey("messages")
