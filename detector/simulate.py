"""`simulate`: how many findings a rule would raise per day (or hour) for several thresholds.

What Sentinel's "results simulation" shows for one threshold, for several at once and in one read of the
data: the source is read once, with the pushdown of the lowest threshold (every group that can fire at
any of the thresholds comes back), and the rule is evaluated at every threshold over the rows kept from
that read. Evaluating through the rule's own logic at each threshold, rather than filtering one result
list on a column, keeps the simulation generic and exact for any rule whose pushdown has a threshold.

Findings are dated by the start of their activity (the bin) and counted per day, or per hour when the
range is two days or shorter. The range is evaluated in pieces of the rule's queryPeriod, as scheduled
runs would, so the rule's trigger (alert when results > N) applies per piece as in Sentinel.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from detector.errors import ConfigError, shown
from detector.evaluate import evaluate
from detector.kql import bin_datetime, format_datetime, plain_int
from detector.logic import logic_class
from detector.models import Finding, Row, Window
from detector.rules import Rule
from detector.sources import ReadRequest, Source
from detector.windows import split_window

HOURLY_UP_TO = timedelta(days=2)


@dataclass
class Simulation:
    """Findings of one rule over a range, per threshold value of one parameter."""

    rule: Rule
    window: Window
    parameter: str
    thresholds: tuple[int, ...]  # ascending
    bucket: timedelta  # 1 day or 1 hour
    findings: dict[int, list[Finding]] = field(default_factory=dict)  # threshold -> findings, rule order per piece
    rows_read: int = 0

    def buckets(self) -> list[datetime]:
        """Start of every day (or hour) of the range, in order, empty ones included."""
        out, moment = [], bin_datetime(self.window.start, self.bucket)
        while moment < self.window.end:
            out.append(moment)
            moment += self.bucket
        return out

    def counts(self) -> dict[int, dict[datetime, int]]:
        """threshold -> bucket start -> number of findings whose activity starts in it."""
        result: dict[int, dict[datetime, int]] = {}
        for threshold, findings in self.findings.items():
            counted = Counter(bin_datetime(activity_start(f, self.window), self.bucket) for f in findings)
            result[threshold] = {b: counted.get(b, 0) for b in self.buckets()}
        return result

    @property
    def rule_threshold(self) -> int:
        value: int = self.rule.parameters[self.parameter]
        return value


def activity_start(finding: Finding, window: Window) -> datetime:
    """When the finding's activity began (its bin); the window start when the logic does not say."""
    return finding.first_activity or window.start


def parse_thresholds(text: str | None) -> tuple[int, ...]:
    """'20,30,50' -> (20, 30, 50); () means the rule's own threshold."""
    if not text:
        return ()
    values = []
    for raw in text.split(","):
        part = raw.strip()
        value = plain_int(part, 9)
        if not value:
            raise ConfigError("--threshold", f"'{shown(part)}' is not a positive whole number; write e.g. --threshold 20,30,50")
        values.append(value)
    return tuple(sorted(set(values)))


def threshold_parameter(rule: Rule, requested: str | None) -> str:
    """The parameter the thresholds replace: --parameter, else the integer parameter the rule's pushdown uses."""
    if requested:
        if not isinstance(rule.parameters.get(requested), int) or isinstance(rule.parameters.get(requested), bool):
            names = ", ".join(k for k, v in rule.parameters.items() if isinstance(v, int) and not isinstance(v, bool))
            raise ConfigError(
                "--parameter", f"rule {rule.id} has no integer parameter '{shown(requested)}'; it has: {names or 'none'}"
            )
        return requested
    spec = rule.logic.candidate_spec()
    threshold = spec.threshold.value if spec is not None and spec.threshold is not None else None
    matches = [k for k, v in rule.parameters.items() if threshold is not None and v == threshold and isinstance(v, int)]
    if len(matches) != 1:
        raise ConfigError("--parameter", f"cannot tell which parameter of rule {rule.id} is its threshold; name it")
    return matches[0]


def with_parameter(rule: Rule, name: str, value: int) -> Rule:
    """The rule with one logic parameter changed (validated by the logic, as a rule file would be)."""
    parameters: dict[str, Any] = {**rule.parameters, name: value}
    cls = logic_class(rule.id)
    if cls is None:
        raise ConfigError("--rule", f"rule {rule.id} has no logic")
    try:
        logic = cls.from_parameters(parameters)
    except ValueError as exc:
        raise ConfigError("--threshold", f"{name}={value}: {exc}") from None
    return dataclasses.replace(rule, parameters=parameters, logic=logic)


def simulate(rule: Rule, source: Source, window: Window, thresholds: Sequence[int], parameter: str | None = None) -> Simulation:
    """Read the range once and evaluate the rule at every threshold (see module doc)."""
    name = threshold_parameter(rule, parameter)
    values = tuple(sorted(set(thresholds))) or (int(rule.parameters[name]),)
    variants = {value: with_parameter(rule, name, value) for value in values}
    lowest = variants[values[0]]
    bucket = timedelta(hours=1) if window.end - window.start <= HOURLY_UP_TO else timedelta(days=1)
    sim = Simulation(rule, window, name, values, bucket, {value: [] for value in values})
    logic = lowest.logic
    for piece in split_window(window, rule.query_period):
        request = ReadRequest(piece, logic.columns, logic.required_columns, logic.candidate_spec())
        rows = list(_counted(source.read(request), sim))
        for value, variant in variants.items():
            sim.findings[value].extend(evaluate(variant, rows, piece))
    return sim


def _counted(rows: Iterator[Row], sim: Simulation) -> Iterator[Row]:
    for row in rows:
        sim.rows_read += 1
        yield row


def render_table(sim: Simulation) -> str:
    """A plain-text table: one line per day or hour, one column per threshold, and the totals."""
    counts = sim.counts()
    unit = "hour" if sim.bucket < timedelta(days=1) else "day"
    headers = [unit, *(f"{sim.parameter}={t}" for t in sim.thresholds)]
    rows = [[_bucket_label(b, sim.bucket), *(str(counts[t][b]) for t in sim.thresholds)] for b in sim.buckets()]
    rows.append(["total", *(str(len(sim.findings[t])) for t in sim.thresholds)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip() + "\n"

    text = (
        f"rule {sim.rule.id} ({sim.rule.name}) over {sim.window}: findings per {unit}, "
        f"from one read of the source ({sim.rows_read} rows returned)\n"
    )
    return text + line(headers) + "".join(line(r) for r in rows)


def _bucket_label(moment: datetime, bucket: timedelta) -> str:
    return moment.strftime("%Y-%m-%d") if bucket >= timedelta(days=1) else format_datetime(moment)


def counts_by_label(sim: Simulation) -> Mapping[int, Mapping[str, int]]:
    """threshold -> bucket label -> count, as the table and the report show them."""
    return {t: {_bucket_label(b, sim.bucket): n for b, n in per.items()} for t, per in sim.counts().items()}
