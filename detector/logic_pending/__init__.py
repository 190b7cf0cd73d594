"""Logic of the three rules that need a whole-window, row-level and two-phase engine (staged).

Each module is pure: W3CIISLog rows and the rule's window in, the query's result rows out, with KQL's
column names and order. The registry in detector/logic/ does not import this package, and their rule
files sit in rules/pending/, which the loader does not read (it lists one folder, not recursively), so
the engine runs as before until it supports these rules; docs/rule-engine-notes.md says what it needs.
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
