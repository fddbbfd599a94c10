"""Processes: the command line, the embedded Redis, the supervisor of
worker generations, the worker process itself, logs, and what aiotools
needs worked around.

The top layer: it may import everything below it, and nothing imports it
(but ``server.__main__``).
"""
