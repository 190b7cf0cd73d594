"""What the rules without a time bin share (anomalous_user_agent, proxyshell, silk_typhoon).

Each such rule is evaluated over its own window (one queryFrequency step, read over queryPeriod: see
detector.windows), and each module is pure: W3CIISLog rows and the window in, the query's result rows
out, with KQL's column names and order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from detector.models import Row, Window


def rows_in(rows: Iterable[Row], window: Window) -> Iterable[Row]:
    """The rows with start <= TimeGenerated < end: the query's time range is the window."""
    return (row for row in rows if window.contains(row["TimeGenerated"]))


def positive_int(parameters: Mapping[str, Any], name: str, default: int) -> int:
    """An integer parameter >= 1; ValueError naming it otherwise."""
    value = parameters.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
