"""The scenarios, by name. Each module has:

- ``DESCRIPTION``: one line;
- ``DEFAULTS``: its defaults for the shared options (``--subscribers``, ``--transport``...);
- ``METRICS``: the rows of its table (:class:`benchmarks.measure.Metric`);
- ``cases(opts)``: the configurations one run measures (most have one; ``rooms``
  has one per ``--rooms`` value), each a dict with a ``label``;
- ``async run(target, ctx, case)``: measure one started target, return its figures.

And optionally (the soak has them): ``DEFAULT_TARGETS`` (``--targets`` when not
given), ``PERSISTENT_REDIS`` (the harness's Redis fsyncs every write, so that
a restart loses nothing), ``default_json_path(opts)`` (``--json`` when not
given) and ``after_record(record, json_path)`` (called once the JSON is
written; returns the names of files written beside it).

The rows that several tables have alike are in :mod:`.rows`.
"""

from __future__ import annotations

from types import ModuleType

from . import capacity, fanout, idle, many, publish, reload, rooms, soak, storm

SCENARIOS: dict[str, ModuleType] = {
    "fanout": fanout,
    "capacity": capacity,
    "rooms": rooms,
    "idle": idle,
    "storm": storm,
    "publish": publish,
    "reload": reload,
    "many": many,
    "soak": soak,
}
