"""The chat itself: messages and their ids and encodings, display names,
rooms and their subscriptions, presence, replays, who a sign-in token says
its bearer is and the roles it gives, and the domain errors.

Knows nothing of Redis or aiohttp (import-linter checks it): what the core
needs of storage is :class:`server.core.backend.Backend`, and the web side
turns its errors into HTTP answers. Imports only :mod:`server.common`.
"""
