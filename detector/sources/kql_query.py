"""KQL text for the Log Analytics source, built only from validated names and escaped literals. Pure.

Nothing user-controlled is pasted into a query: the table name and column names must match an
identifier pattern (checked here again, whatever checked them before), datetimes are rendered by us,
and strings (group keys found by the candidates query) are rendered as escaped KQL string literals.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from detector.kql import format_timespan, string_literal
from detector.logic import CandidateSpec

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def identifier(name: str) -> str:
    """A table or column name, checked; raises ValueError for anything that is not a plain identifier."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a KQL identifier (letters, digits, underscores)")
    return name


def datetime_literal(moment: datetime) -> str:
    """datetime(2026-11-26T00:10:00.000000Z): UTC, microseconds (our precision)."""
    if moment.utcoffset() != timedelta(0):
        raise ValueError(f"datetimes in queries must be timezone-aware UTC, got {moment!r}")
    return f"datetime({moment.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z)"


def time_filter(start: datetime, end: datetime) -> str:
    """start <= TimeGenerated < end. The API's timespan is also sent, but its end is inclusive."""
    return f"TimeGenerated >= {datetime_literal(start)} and TimeGenerated < {datetime_literal(end)}"


@dataclass(frozen=True)
class GroupRange:
    """Rows of one group key (column -> value) with start <= TimeGenerated < end."""

    key: tuple[tuple[str, str], ...]
    start: datetime
    end: datetime

    def clause(self) -> str:
        """The KQL predicate selecting exactly these rows."""
        parts = [time_filter(self.start, self.end)]
        parts += [f"{identifier(column)} == {string_literal(value)}" for column, value in self.key]
        return "(" + " and ".join(parts) + ")"


def candidates_query(table: str, start: datetime, end: datetime, spec: CandidateSpec) -> str:
    """Groups whose distinct count of spec.distinct_column reaches spec.threshold, with their row counts.

    Exact, not an estimate: make_set(x, threshold) holds min(distinct non-null x, threshold) values, so
    its length reaches the threshold exactly when the distinct count does (dcount() is a HyperLogLog
    estimate and could miss a group). Capping the set at the threshold also keeps the server's memory small.
    `rows` counts every row of the group (nulls included): the details step checks it gets at least that many.
    """
    keys = ", ".join(identifier(k) for k in spec.keys)
    distinct = identifier(spec.distinct_column)
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| summarize distinct_values = array_length(make_set({distinct}, {int(spec.threshold)})), rows = count()"
        f" by TimeGenerated = bin(TimeGenerated, {format_timespan(spec.time_bin)}), {keys}\n"
        f"| where distinct_values >= {int(spec.threshold)}\n"
        f"| project TimeGenerated, {keys}, rows"
    )


def details_query(table: str, ranges: Sequence[GroupRange], columns: Iterable[str]) -> str:
    """Only `columns`, only for rows of the given group ranges."""
    if not ranges:
        raise ValueError("details_query needs at least one group range")
    start = min(r.start for r in ranges)
    end = max(r.end for r in ranges)
    clauses = "\n    or ".join(r.clause() for r in ranges)
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| where {clauses}\n"
        f"| project {', '.join(identifier(c) for c in columns)}"
    )


def raw_query(table: str, start: datetime, end: datetime, columns: Iterable[str]) -> str:
    """Every row of the window, only `columns`."""
    return f"{identifier(table)}\n| where {time_filter(start, end)}\n| project {', '.join(identifier(c) for c in columns)}"


def bin_counts_query(table: str, start: datetime, end: datetime, time_bin: timedelta) -> str:
    """Rows per time bin, to plan raw reads that stay under the per-response limits."""
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| summarize rows = count() by TimeGenerated = bin(TimeGenerated, {format_timespan(time_bin)})"
    )


def late_bins_query(table: str, start: datetime, end: datetime, ingested_after: datetime, time_bin: timedelta) -> str:
    """Bins of the window holding rows ingested after `ingested_after` (ingestion_time() is Log Analytics')."""
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| where ingestion_time() > {datetime_literal(ingested_after)}\n"
        f"| summarize rows = count() by TimeGenerated = bin(TimeGenerated, {format_timespan(time_bin)})"
    )
