"""The scenarios, by name. Each module has:

- ``DESCRIPTION``: one line;
- ``DEFAULTS``: its defaults for the shared options (``--subscribers``, ``--transport``...);
- ``METRICS``: the rows of its table (:class:`benchmarks.measure.Metric`);
- ``cases(opts)``: the configurations one run measures (most have one; ``rooms``
  has one per ``--rooms`` value), each a dict with a ``label``;
- ``async run(target, ctx, case)``: measure one started target, return its figures.

The rows that several tables have alike are in :mod:`.rows`.
"""

from __future__ import annotations

from types import ModuleType

from . import capacity, fanout, idle, publish, reload, rooms, storm

SCENARIOS: dict[str, ModuleType] = {
    "fanout": fanout,
    "capacity": capacity,
    "rooms": rooms,
    "idle": idle,
    "storm": storm,
    "publish": publish,
    "reload": reload,
}
