"""HTTP, SSE and WebSocket: the aiohttp app, its handlers and transports, the
middleware every request passes, the edge (deadlines and per-address
limits on connections), sessions and posting, sign-in tokens and the JWKS
keys that verify them, and the page in ``static/``.

Imports the stores, the core and :mod:`server.common`; nothing of the
processes.
"""
