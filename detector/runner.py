"""One run: read rows for a window, evaluate every rule, deliver findings to every sink.

Shared by the CLI and the Azure Function. Findings are complete before any sink is called, so a source
failure delivers nothing; one failing sink does not stop the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from detector.errors import SinkError
from detector.evaluate import evaluate
from detector.kql import format_datetime
from detector.models import Finding, Row, Window
from detector.rules import Rule, load_rules
from detector.sinks import Sink
from detector.sources import ReadRequest, Source
from detector.windows import latest_window

if TYPE_CHECKING:
    from detector.config import Settings

log = logging.getLogger("detector")


@dataclass
class RuleRun:
    """What one rule's evaluation of one window did."""

    rule_id: str
    window: Window
    rows_read: int = 0
    findings: list[Finding] = field(default_factory=list)


@dataclass
class RunSummary:
    """The outcome of a run; `ok` is False when any delivery failed."""

    source: str
    rules: list[RuleRun] = field(default_factory=list)
    delivery_errors: dict[str, str] = field(default_factory=dict)  # sink -> error
    deliveries: dict[str, int] = field(default_factory=dict)  # sink -> findings delivered
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.delivery_errors

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.rules for f in r.findings]

    def to_json(self) -> dict[str, Any]:
        """Structured form for logs (Application Insights customDimensions) and the CLI."""
        return {
            "source": self.source,
            "rules": [
                {
                    "ruleId": r.rule_id,
                    "windowStart": format_datetime(r.window.start),
                    "windowEnd": format_datetime(r.window.end),
                    "rowsRead": r.rows_read,
                    "findings": len(r.findings),
                }
                for r in self.rules
            ],
            "findings": len(self.findings),
            "deliveries": self.deliveries,
            "deliveryErrors": self.delivery_errors,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
        }


def _counted(rows: Iterator[Row], run: RuleRun) -> Iterator[Row]:
    for row in rows:
        run.rows_read += 1
        yield row


def evaluate_window(rule: Rule, source: Source, window: Window) -> RuleRun:
    """Read the rows one rule needs for a window and evaluate it. Raises if the source cannot answer whole."""
    run = RuleRun(rule.id, window)
    logic = rule.logic
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec())
    run.findings = evaluate(rule, _counted(source.read(request), run), window)
    log.info("rule %s window %s: %d rows, %d findings", rule.id, window, run.rows_read, len(run.findings))
    return run


def deliver(findings: Sequence[Finding], sinks: Sequence[Sink], summary: RunSummary) -> None:
    """Deliver to every sink; a failing sink is recorded and the others still run."""
    for sink in sinks:
        try:
            sink.deliver(findings)
            summary.deliveries[sink.describe()] = len(findings)
        except SinkError as exc:
            summary.delivery_errors[sink.describe()] = str(exc)
            log.error("delivery to %s failed: %s", sink.describe(), exc)  # noqa: TRY400 - expected failure, message is enough


def run(plan: Sequence[tuple[Rule, Window]], source: Source, sinks: Sequence[Sink]) -> RunSummary:
    """Evaluate each (rule, window) of the plan, then deliver all findings to every sink."""
    started = time.monotonic()
    summary = RunSummary(source=source.describe())
    for rule, window in plan:
        summary.rules.append(evaluate_window(rule, source, window))
    deliver(summary.findings, sinks, summary)
    summary.seconds = time.monotonic() - started
    return summary


def run_scheduled(settings: Settings, now: datetime) -> RunSummary:
    """The timer's run: every configured rule over its latest whole-bin window ending before now - delay."""
    from detector.sinks import open_sink
    from detector.sources import open_source

    if settings.now_override is not None:
        now = settings.now_override
    rules = load_rules(settings.rules)
    source = open_source(settings.source, settings, settings.computer, setting="DETECTOR_SOURCE")
    sinks = [open_sink(spec, settings, setting="DETECTOR_SINKS") for spec in settings.sinks]
    plan = [(rule, latest_window(now, settings.ingestion_delay, rule.query_period, rule.logic.time_bin)) for rule in rules]
    return run(plan, source, sinks)
