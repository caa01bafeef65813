"""How a metric is printed in tables (stage summaries, report.md, the model card)."""

from __future__ import annotations

import math


def num(value, spec: str = ".4f", width: int = 0) -> str:
    """``value`` formatted with ``spec``, right-aligned to ``width``; ``"-"`` when there
    is no value: a group with no users in it (no short-history users, no labelled test
    users, an empty activity bucket) has no mean, and says so instead of crashing."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return ("-" if missing else format(value, spec)).rjust(width)
