"""`explain`: what a scheduled run would do for a rule, without doing it. Reads state, writes nothing.

For each rule: its Sentinel fields and logic parameters; the windows the next scheduled run would evaluate
from the rule's checkpoint (and the bins it would re-check for late rows); and, for one window, the exact
KQL of both steps the Log Analytics source sends in two-step mode, to paste into Log Analytics and compare.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

from detector.kql import format_datetime, format_timespan
from detector.models import Window
from detector.rules import Rule
from detector.windows import evaluation_period, plan_windows

if TYPE_CHECKING:
    from detector.config import Settings

# The details step asks for the rows of the groups the candidates step returned; explain sends no query,
# so it shows the clause for one group with these stand-in values.
PLACEHOLDER = "<{column} of a candidate group>"


def explain(rules: list[Rule], settings: Settings, now: datetime, window: Window | None) -> str:
    """The text `python -m detector explain` prints."""
    from detector.state import open_state_store

    store = open_state_store(settings)
    return "\n".join(explain_rule(rule, settings, store, now, window) for rule in rules)


def explain_rule(rule: Rule, settings: Settings, store: object, now: datetime, window: Window | None) -> str:
    """The `explain` text: the rule's parameters, the windows the next run would evaluate, and its KQL."""
    from detector.state import StateStore

    assert isinstance(store, StateStore)  # noqa: S101 - typed loosely to keep the state package import lazy
    lines = [
        f"rule {rule.id}: {rule.name} v{rule.version} ({rule.path})",
        f"  severity {rule.severity}; queryFrequency {format_timespan(rule.query_frequency)}, "
        f"queryPeriod {format_timespan(rule.query_period)}; alerts when results {rule.trigger_operator} {rule.trigger_threshold}",
        f"  tactics {', '.join(rule.tactics) or '-'}; techniques {', '.join(rule.techniques) or '-'}",
        "  parameters:",
    ]
    lines += [f"    {name}: {json.dumps(value, default=str)}" for name, value in rule.parameters.items()]

    time_bin = rule.logic.time_bin
    state = store.load_rule_state(rule.id, time_bin)
    period = evaluation_period(time_bin, rule.query_period, rule.logic.whole_window)
    plan = plan_windows(state.checkpoint, now, settings.ingestion_delay, time_bin, period, settings.catchup_limit)
    checkpoint = format_datetime(state.checkpoint) if state.checkpoint else "none (a first run covers queryPeriod)"
    lines.append(f"  state {store.describe()}: checkpoint {checkpoint}")
    lines.append(
        f"  next scheduled run at {format_datetime(now)} (DETECTOR_INGESTION_DELAY {format_timespan(settings.ingestion_delay)}):"
    )
    if plan.skipped:
        lines.append(f"    NOT evaluated, older than DETECTOR_CATCHUP_LIMIT: {plan.skipped} (use backfill)")
    lines += [f"    evaluate {w}" for w in plan.windows] or ["    no whole window is due yet"]
    horizon_start = (state.checkpoint or now) - settings.recheck_horizon
    recheck = sorted(b for b in state.evaluated if b >= horizon_start)
    if recheck:
        lines.append(
            f"    re-check for late rows {len(recheck)} bin(s) from {format_datetime(recheck[0])} to "
            f"{format_datetime(recheck[-1] + time_bin)} (DETECTOR_RECHECK_HORIZON {format_timespan(settings.recheck_horizon)})"
        )

    shown = window or (plan.windows[0] if plan.windows else None)
    if shown is None:
        lines.append("  KQL: give --start and --end to see the queries for a window")
    else:
        lines += _kql(rule, settings, shown)
    return "\n".join(lines) + "\n"


def _kql(rule: Rule, settings: Settings, window: Window) -> list[str]:
    from detector.sources.kql_query import GroupRange, candidates_query, details_query, raw_query

    table = settings.logs.table
    spec = rule.logic.candidate_spec()
    columns = tuple(dict.fromkeys((*rule.logic.columns, *(spec.columns() if spec is not None else ()))))
    row_filter = spec.filter if spec is not None else None
    lines = [f"  KQL for {window} (DETECTOR_LOGS_TABLE {table}):"]
    if spec is None or not spec.prunes:
        why = "the rule has no pushdown" if spec is None else "the rule's threshold cannot prune groups"
        lines.append(f"  {why}; the source reads the window's rows that pass the rule's filter:")
        lines += _indent(raw_query(table, window.start, window.end, columns, row_filter))
        return lines
    lines.append("  step 1, candidate groups (computed by Log Analytics):")
    lines += _indent(candidates_query(table, window.start, window.end, spec))
    placeholder = tuple((key, PLACEHOLDER.format(column=key)) for key in spec.keys)
    bin_end = window.end if spec.time_bin is None else min(window.end, window.start + spec.time_bin)
    example = GroupRange(placeholder, window.start, bin_end)
    lines.append(
        "  step 2, rows of those groups (one clause per candidate group and bin from step 1; shown for one, "
        "with stand-in values):"
    )
    lines += _indent(details_query(table, [example], columns, row_filter))
    return lines


def _indent(text: str) -> list[str]:
    return ["    " + line for line in text.splitlines()]
