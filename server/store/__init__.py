"""Redis: key names, scripts, batches of commands, and the stores built on
them (messages, pub/sub and the relay, presence, connections, budgets,
sessions), with the worker's clients. What they rely on of redis-py and
aiohttp-session beyond their documented APIs is in :mod:`.redis_compat` and
:mod:`.aiohttp_session_compat`.

Imports :mod:`server.core` and :mod:`server.common`; nothing of the web or
the processes.
"""
