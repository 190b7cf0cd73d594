"""The engine: rows and a window in, findings out. Pure: no clock, no clients, no environment."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from detector.models import Entity, Finding, Row, Window, finding_id
from detector.rules import Rule


def evaluate(rule: Rule, rows: Iterable[Row], window: Window) -> list[Finding]:
    """Evaluate a rule over rows for one window, as Sentinel would for the same rows and window."""
    results = rule.logic.evaluate(rows, window)
    if not rule.triggers(len(results)):
        return []
    findings = []
    for rank, result in enumerate(results):
        entities = []
        for mapping in rule.entity_mappings:
            fields = {
                identifier: str(result[column]) for identifier, column in mapping.fields if _entity_value(result.get(column))
            }
            if fields:
                entities.append(Entity(mapping.entity_type, fields))
        findings.append(
            Finding(
                id=finding_id(rule.id, *rule.logic.finding_key(result, window)),
                rule_id=rule.id,
                rule_name=rule.name,
                rule_version=rule.version,
                severity=rule.severity,
                tactics=rule.tactics,
                techniques=rule.techniques,
                window=window,
                columns=result,
                entities=tuple(entities),
                first_activity=_clip(rule.logic.first_activity(result), window),
                last_activity=_clip(rule.logic.last_activity(result), window),
                title=rule.logic.title(result),
                summary=rule.logic.summary(result),
                evidence=rule.logic.evidence(result),
                rank=rank,
            )
        )
    return findings


def _entity_value(value: Any) -> bool:
    """Whether a column value names an entity: not empty, and not the "-" IIS writes for "none"."""
    return bool(value) and value != "-"


def _clip(moment: Any, window: Window) -> datetime | None:
    """A logic's activity time, kept inside the window (a partial bin ends where the window ends)."""
    if not isinstance(moment, datetime):
        return None
    return min(max(moment, window.start), window.end)
