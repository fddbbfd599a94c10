"""What the tests and the benchmarks both run: private Redis servers and the
chat server as real processes, and the helpers to start, read and stop them.

A package of the repository, not installed: the tests (run from the
repository's root by pytest) and the load generator (``python -m
benchmarks.loadgen``, from the root too) import it from the checkout, and
the wheel ships only ``server``.

- :mod:`harness.processes`: free ports, starting a child in its own process
  group and reading its ready line, stopping or killing the whole group;
- :mod:`harness.redis_servers`: one ``redis-server``, a Redis Cluster, a
  primary with a replica and a Sentinel;
- :mod:`harness.chat`: ``python -m server`` as a process, message ids.
"""
