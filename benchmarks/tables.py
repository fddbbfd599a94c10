"""The table of one case: a row per metric, a column per target, then the ratios.

The same text is a reStructuredText simple table, so the console output and
``BENCHMARKS.rst`` (``benchmarks/report.py``) share this code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OURS = "chat"
OTHERS = ("bare", "socketio")
# The variants of the chat server (``chat-signed``, ``chat-api``, ...: the
# same server with one thing changed) are each compared with it, in the
# same run: ``<variant>/chat``.
VARIANT_PREFIX = OURS + "-"
# The bare broadcaster's twins of variants (``bare-typing``: the same typing
# load as ``chat-features``), each compared with it: ``bare-<twin>/bare``.
BARE = OTHERS[0]
TWIN_PREFIX = BARE + "-"


def is_variant(name: str) -> bool:
    return name.startswith(VARIANT_PREFIX)


def is_chat(name: str) -> bool:
    """The chat server or one of its variants."""
    return name == OURS or is_variant(name)


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The ratio columns of a table of these targets, numerator over denominator:
    chat over each other target, then each variant over chat and each of the
    bare broadcaster's twins over it, where both are."""
    pairs = [(OURS, other) for other in OTHERS if OURS in names and other in names]
    pairs += [(name, OURS) for name in names if is_variant(name) and OURS in names]
    return pairs + [
        (name, BARE) for name in names if name.startswith(TWIN_PREFIX) and BARE in names
    ]


def cell(result: dict[str, Any] | None, key: str, fmt: str) -> str:
    if result is None or "na" in result:
        return "n/a"
    if "error" in result:
        return "failed"
    value = result.get(key)
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return fmt.format(value)
    return str(value)


def ratio(ours: dict[str, Any] | None, other: dict[str, Any] | None, key: str) -> str:
    def number(result: dict[str, Any] | None) -> float | None:
        if result is None or "na" in result or "error" in result:
            return None
        value = result.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    a, b = number(ours), number(other)
    if a is None or b is None:
        return "n/a"
    if b == 0:
        return "both 0" if a == 0 else "inf"
    return f"{a / b:.2f}"


def render(metrics: Sequence[Sequence[Any]], results: dict[str, dict[str, Any]]) -> str:
    """``metrics``: (label, key, fmt, ratio) rows; ``results``: target name -> figures."""
    names = list(results)
    pairs = ratio_pairs(names)
    headers = ["metric", *names, *(f"{a}/{b}" for a, b in pairs)]
    rows = []
    for label, key, fmt, with_ratio in metrics:
        row = [label, *(cell(results[n], key, fmt) for n in names)]
        row += [ratio(results[a], results[b], key) if with_ratio else "" for a, b in pairs]
        rows.append(row)
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    rule = "  ".join("=" * w for w in widths)

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([rule, line(headers), rule, *map(line, rows), rule])
