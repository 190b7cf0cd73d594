"""Running a rule's inline examples: the offline test every rule carries with it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from detector.evaluate import evaluate
from detector.kql import format_datetime
from detector.rules import Rule, RuleExample


def _comparable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def check_example(rule: Rule, example: RuleExample) -> list[str]:
    """Problems found running one example (empty when it behaves as it says)."""
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
