"""Redis: key names, scripts, batches of commands, and the stores built on
them (messages, pub/sub and the relay, presence, connections, budgets,
sessions), with the worker's clients.

Imports :mod:`server.core` and :mod:`server.common`; nothing of the web or
the processes.
"""
