"""A rule's inline examples: expanding their rows, and running them (the offline test every rule carries)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from detector.kql import format_datetime

if TYPE_CHECKING:  # rules.py expands rows with this module while it loads; it must not import rules back
    from detector.rules import Rule, RuleExample

# Keys of an example row that are not W3CIISLog columns but say how to repeat the row.
REPEAT, EACH = "repeat", "each"
_MAX_EXPANDED_ROWS = 100_000
_RANGE = re.compile(r"^\s*(-?[0-9]{1,18})\s*-\s*(-?[0-9]{1,18})\s*$")  # ASCII: int() would read other digits


class ExampleRowError(ValueError):
    """A repeat/each key of an example row that cannot be expanded; `key` names it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _each_values(column: str, spec: Any) -> Sequence[Any]:
    if isinstance(spec, list) and spec:
        return spec
    text = spec if isinstance(spec, str) else ""  # an int is a value, not a range (YAML reads 8000-8029 as text)
    match = _RANGE.match(text)
    if match and int(match.group(1)) <= int(match.group(2)):
        return range(int(match.group(1)), int(match.group(2)) + 1)  # counted before any row is built
    problem = "must be a non-empty list of values or an integer range like 8000-8029 (first <= last)"
    raise ExampleRowError(f"{EACH}.{column}", problem)


def expand_row(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows one example row stands for, to keep examples short.

    `repeat: N` stands for N identical rows. `each: {column: values}` stands for one row per value, where
    values is a list or an integer range "8000-8029"; several columns give every combination. Both
    together give N copies of every combination. A row without them is itself.
    """
    base = {k: v for k, v in raw.items() if k not in (REPEAT, EACH)}
    count = raw.get(REPEAT, 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ExampleRowError(REPEAT, "must be a positive integer (how many copies of the row)")
    each = raw.get(EACH, {})
    if not isinstance(each, dict) or (EACH in raw and not each):
        raise ExampleRowError(EACH, "must map column names to a list of values or an integer range")
    columns = list(each)
    choices = [_each_values(column, each[column]) for column in columns]
    total = count
    for values in choices:
        total *= len(values)
    if total > _MAX_EXPANDED_ROWS:
        problem = f"stands for {total} rows; keep an example under {_MAX_EXPANDED_ROWS}"
        raise ExampleRowError(EACH if columns else REPEAT, problem)
    rows: list[dict[str, Any]] = []
    for combination in itertools.product(*choices):
        row = {**base, **dict(zip(columns, combination, strict=True))}
        rows.extend(dict(row) for _ in range(count))
    return rows


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def check_example(rule: Rule, example: RuleExample) -> list[str]:
    """Problems found running one example (empty when it behaves as it says)."""
    from detector.evaluate import evaluate  # evaluate imports rules, which imports this module

    findings = evaluate(rule, example.rows, example.window)
    problems = []
    if bool(findings) != example.fires:
        problems.append(f"expected {'a finding' if example.fires else 'no finding'}, got {len(findings)}")
    if example.expected and len(findings) != len(example.expected):
        problems.append(f"expected {len(example.expected)} result rows, got {len(findings)}")
    for i, (finding, expected) in enumerate(zip(findings, example.expected, strict=False)):
        for column, want in expected.items():
            if column not in finding.columns:
                problems.append(f"result {i}: no column {column}")
                continue
            got = _comparable(finding.columns[column])
            expect = want
            if isinstance(want, list) and isinstance(got, list):  # KQL sets are unordered
                expect, got = sorted(want, key=str), sorted(got, key=str)
            if got != expect:
                problems.append(f"result {i}: {column} is {got!r}, expected {want!r}")
    return [f"{rule.path}: example '{example.name}': {p}" for p in problems]


def check_rule_examples(rule: Rule) -> list[str]:
    """Problems across all of a rule's examples."""
    return [problem for example in rule.examples for problem in check_example(rule, example)]
