"""KQL text for the Log Analytics source, built only from validated names and escaped literals. Pure.

Nothing user-controlled is pasted into a query: the table name and column names must match an
identifier pattern (checked here again, whatever checked them before), datetimes are rendered by us,
and strings (group keys found by the candidates query, filter literals) are rendered as escaped KQL
string literals (detector.kql.string_literal). The rule's pushdown description (detector.pushdown)
becomes the queries' `where` (its filter, widened where a part is opaque) and the candidates
`summarize` (its measure per time bin and keys, with its threshold).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from detector.kql import format_timespan, string_literal
from detector.pushdown import CandidateSpec, DistinctCount, FirstPhase, InSet, Predicate

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


def filter_clause(row_filter: Predicate | None) -> str:
    """`| where <filter>` for the rule's row filter (empty when nothing can be pushed down)."""
    text = row_filter.kql_admits() if row_filter is not None else None
    return f"| where {text}\n" if text else ""


def key_literal(column: str, value: object) -> str:
    """A predicate selecting rows whose column holds this (group key) value."""
    if value is None:
        return f"isnull({identifier(column)})"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"a group key value must be a string or an integer, got {value!r}")
    if isinstance(value, int):
        return f"{identifier(column)} == {int(value)}"
    return f"{identifier(column)} == {string_literal(value)}"


@dataclass(frozen=True)
class GroupRange:
    """Rows of one group key (column -> value) with start <= TimeGenerated < end."""

    key: tuple[tuple[str, str | int | None], ...]
    start: datetime
    end: datetime

    def clause(self) -> str:
        """The KQL predicate selecting exactly these rows."""
        parts = [time_filter(self.start, self.end)]
        parts += [key_literal(column, value) for column, value in self.key]
        return "(" + " and ".join(parts) + ")"


def candidates_query(table: str, start: datetime, end: datetime, spec: CandidateSpec) -> str:
    """Groups whose measure meets the spec's (pruning) threshold, with their row counts.

    Exact, not an estimate: a distinct count is the length of make_set(x, minimum), which reaches the
    minimum exactly when the distinct count does (see DistinctCount.kql). `rows` counts every row of the
    group the filter keeps (nulls included): the details step checks it gets at least that many. The
    answer also holds one row whose `total` is the rows of [start, end) before any filter (window_total).
    """
    if not spec.prunes or spec.threshold is None:
        raise ValueError("candidates_query needs a spec whose threshold prunes")
    minimum = int(spec.threshold.minimum)
    keys = [identifier(k) for k in spec.keys]
    by = ([f"TimeGenerated = bin(TimeGenerated, {format_timespan(spec.time_bin)})"] if spec.time_bin else []) + keys
    by_clause = f" by {', '.join(by)}" if by else ""
    if isinstance(spec.measure, DistinctCount):
        identifier(spec.measure.column)
        measure = f"measure = {spec.measure.kql(minimum)}, "
        condition = f"measure >= {minimum}"
    else:
        measure, condition = "", f"rows >= {minimum}"
    projected = (["TimeGenerated"] if spec.time_bin else []) + keys + ["rows"]
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"{filter_clause(spec.filter)}"
        f"| summarize {measure}rows = count(){by_clause}\n"
        f"| where {condition}\n"
        f"| project {', '.join(projected)}\n"
        f"{window_total(table, start, end, projected)}"
    )


def details_query(table: str, ranges: Sequence[GroupRange], columns: Iterable[str], row_filter: Predicate | None = None) -> str:
    """Only `columns`, only for rows of the given group ranges that the filter keeps."""
    if not ranges:
        raise ValueError("details_query needs at least one group range")
    start = min(r.start for r in ranges)
    end = max(r.end for r in ranges)
    clauses = "\n    or ".join(r.clause() for r in ranges)
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"{filter_clause(row_filter)}"
        f"| where {clauses}\n"
        f"| project {', '.join(identifier(c) for c in columns)}"
    )


def raw_query(table: str, start: datetime, end: datetime, columns: Iterable[str], row_filter: Predicate | None = None) -> str:
    """Every row of the window the filter keeps, only `columns`."""
    return (
        f"{identifier(table)}\n| where {time_filter(start, end)}\n{filter_clause(row_filter)}"
        f"| project {', '.join(identifier(c) for c in columns)}"
    )


def bin_counts_query(table: str, start: datetime, end: datetime, time_bin: timedelta, row_filter: Predicate | None = None) -> str:
    """Rows per time bin (`rows`: those the filter keeps; `total`: all), to plan raw reads under the limits."""
    kept = f"countif({row_filter.kql_admits()})" if row_filter is not None and row_filter.kql_admits() else "count()"
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| summarize rows = {kept}, total = count() by TimeGenerated = bin(TimeGenerated, {format_timespan(time_bin)})"
    )


TOTAL = "total"


def window_total(table: str, start: datetime, end: datetime, columns: Iterable[str]) -> str:
    """`| union (...)`: one more row, whose `total` is how many rows [start, end) holds before any filter.

    What the run summary reports as rows read, carried by a query that runs anyway instead of a request of
    its own (the API allows 200 requests per 30 s). The union is outer: every other row has a null
    `total`, and count() is never null, which tells the count row apart (its other columns are null, or
    empty for strings, which have no null in KQL). The count covers exactly [start, end), so the counts
    of the pieces of a split read add up to the window's; an answer that comes back cut is dropped
    whole, count included.
    """
    if TOTAL in columns:
        raise ValueError(f"a query that carries the window's row count cannot also have a column named {TOTAL!r}")
    return f"| union ({identifier(table)} | where {time_filter(start, end)} | summarize {TOTAL} = count())"


def late_bins_query(table: str, start: datetime, end: datetime, ingested_after: datetime, time_bin: timedelta) -> str:
    """Bins of the window holding rows ingested after `ingested_after` (ingestion_time() is Log Analytics')."""
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| where ingestion_time() > {datetime_literal(ingested_after)}\n"
        f"| summarize rows = count() by TimeGenerated = bin(TimeGenerated, {format_timespan(time_bin)})"
    )


def first_phase_query(table: str, start: datetime, end: datetime, first: FirstPhase, columns: Iterable[str]) -> str:
    """One row (the earliest) per key value that has a row passing the first phase's filter in the window.

    A handful of rows, whatever the window's length: what the rule needs to see each key qualify. Plus
    the window's row count (window_total).
    """
    condition = first.filter.kql_admits()
    if condition is None:
        raise ValueError("a first phase's filter must be pushable")
    wanted = [identifier(c) for c in columns]
    others = [c for c in wanted if c not in ("TimeGenerated", first.key)]
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| where {condition}\n"
        f"| summarize arg_min({', '.join(['TimeGenerated', *others])}) by {identifier(first.key)}\n"
        f"| project {', '.join(wanted)}\n"
        f"{window_total(table, start, end, wanted)}"
    )


def second_phase_query(
    table: str,
    start: datetime,
    end: datetime,
    key: str,
    values: Sequence[str],
    columns: Iterable[str],
    row_filter: Predicate | None,
) -> str:
    """The rows of [start, end) whose key is one of `values` (names the workspace gave: escaped literals)."""
    if not values:
        raise ValueError("second_phase_query needs at least one key value")
    return (
        f"{identifier(table)}\n"
        f"| where {time_filter(start, end)}\n"
        f"| where {InSet(identifier(key), 'in', tuple(values))._kql()}\n"
        f"{filter_clause(row_filter)}"
        f"| project {', '.join(identifier(c) for c in columns)}"
    )
