"""Value objects shared by sources, rules, sinks and the runner."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detector.kql import format_datetime, parse_datetime

# A W3CIISLog row: Log Analytics column names to values. TimeGenerated is a tz-aware UTC datetime,
# sPort an int or None, the other columns the rule reads are str ("" when absent: KQL strings have no null).
Row = dict[str, Any]

# Namespace of finding ids (uuid5). Never change it: ids must stay stable across versions, because
# sinks (Sentinel incident ids, the outbox) key on them.
FINDING_NAMESPACE = uuid.UUID("5f0c3a52-8f7e-4c8e-9d0b-2a1f44a555d8")

SHORTENED_TAIL = "shortened to fit the state store"
_SHORTENED = re.compile(rf"…\[{SHORTENED_TAIL}; sha256 ([0-9a-f]{{64}})\]\Z")


def shortened_text(value: str, keep: int) -> str:
    """The value's first `keep` characters and a marker holding the SHA-256 of the whole value (UTF-8).

    For a stored copy too long to keep whole (the Azure Table state store's 1 MiB entities).
    """
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:keep]}…[{SHORTENED_TAIL}; sha256 {digest}]"


def shortened_digest(value: str) -> str | None:
    """The SHA-256 of the whole value a shortened_text stands for, or None when it is no such text."""
    match = _SHORTENED.search(value)
    return match.group(1) if match else None


@dataclass(frozen=True, order=True)
class Window:
    """A half-open time window [start, end) in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware UTC datetimes")
        if self.start >= self.end:
            raise ValueError(f"window start {format_datetime(self.start)} is not before end {format_datetime(self.end)}")

    def contains(self, moment: datetime) -> bool:
        """True when start <= moment < end, the filter every source applies."""
        return self.start <= moment < self.end

    def __str__(self) -> str:
        return f"[{format_datetime(self.start)}, {format_datetime(self.end)})"


def finding_id(rule_id: str, *key: Any) -> str:
    """Stable id of a finding: the same rule and group key always give the same id (a UUID string).

    Parts are joined by U+001F. A part holding U+001E or U+001F (attacker-controlled values can) has them
    escaped with U+001E first, so no two different keys give one text (a crafted value must not make its
    finding overwrite another's); parts without them, i.e. every real key so far, keep the ids they had.
    """
    parts = [rule_id] + [format_datetime(k) if isinstance(k, datetime) else str(k) for k in key]
    escaped = [p.replace("\x1e", "\x1e\x1e").replace("\x1f", "\x1e\x1f") if "\x1e" in p or "\x1f" in p else p for p in parts]
    return str(uuid.uuid5(FINDING_NAMESPACE, "\x1f".join(escaped)))


@dataclass(frozen=True)
class Entity:
    """A Sentinel entity: type (IP, Host) and its identifier fields."""

    type: str
    fields: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"Type": self.type, **self.fields}


@dataclass(frozen=True)
class Finding:
    """One result row of a rule, with the metadata a SOC needs to act on it."""

    id: str
    rule_id: str
    rule_name: str
    rule_version: str
    severity: str
    tactics: tuple[str, ...]
    techniques: tuple[str, ...]
    window: Window
    columns: Mapping[str, Any]  # the query's output columns, in KQL order, with KQL names
    entities: tuple[Entity, ...] = field(default_factory=tuple)
    # The span of the activity the finding describes (for a time-binned rule: its bin, clipped to the
    # window). Sinks use it for incident activity times and evidence queries. None when unknown.
    first_activity: datetime | None = None
    last_activity: datetime | None = None
    # Presentation, from the rule (RuleLogic.title/summary/evidence): plain text, escaped by each sink.
    title: str = ""
    summary: str = ""
    evidence: tuple[tuple[str, str], ...] = ()  # (label, column name) pairs, the fields read first
    # Position of the result in the rule's output for its window (the rule's order, e.g. by its measure,
    # descending), so findings read back from the outbox are shown in the order a direct run shows them.
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        """A flat JSON object: the KQL columns in order, then the finding's metadata."""
        out: dict[str, Any] = {}
        for name, value in self.columns.items():
            out[name] = format_datetime(value) if isinstance(value, datetime) else value
        out.update(
            {
                "FindingId": self.id,
                "RuleId": self.rule_id,
                "RuleName": self.rule_name,
                "RuleVersion": self.rule_version,
                "Severity": self.severity,
                "Tactics": list(self.tactics),
                "Techniques": list(self.techniques),
                "WindowStart": format_datetime(self.window.start),
                "WindowEnd": format_datetime(self.window.end),
                "Entities": [e.to_json() for e in self.entities],
            }
        )
        return out

    def digest(self) -> str:
        """Hash of what the finding says (its columns and entities, not the window that found it).

        A re-evaluation that finds the same thing gives the same digest; one that finds more (late rows)
        gives a new one, which is how the outbox knows a delivered finding needs an update.
        """
        content = self.to_json()
        for key in ("WindowStart", "WindowEnd"):
            content.pop(key)
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]

    def to_state(self) -> dict[str, Any]:
        """Lossless JSON form for the state store (datetimes tagged so they come back as datetimes)."""
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "rule_version": self.rule_version,
            "severity": self.severity,
            "tactics": list(self.tactics),
            "techniques": list(self.techniques),
            "window": [format_datetime(self.window.start), format_datetime(self.window.end)],
            "columns": {k: {"$dt": format_datetime(v)} if isinstance(v, datetime) else v for k, v in self.columns.items()},
            "entities": [[e.type, dict(e.fields)] for e in self.entities],
            "activity": [format_datetime(t) if t else None for t in (self.first_activity, self.last_activity)],
            "title": self.title,
            "summary": self.summary,
            "evidence": [list(pair) for pair in self.evidence],
            "rank": self.rank,
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of to_state()."""
        return cls(
            id=data["id"],
            rule_id=data["rule_id"],
            rule_name=data["rule_name"],
            rule_version=data["rule_version"],
            severity=data["severity"],
            tactics=tuple(data["tactics"]),
            techniques=tuple(data["techniques"]),
            window=Window(parse_datetime(data["window"][0]), parse_datetime(data["window"][1])),
            columns={
                k: parse_datetime(v["$dt"]) if isinstance(v, dict) and "$dt" in v else v for k, v in data["columns"].items()
            },
            entities=tuple(Entity(t, f) for t, f in data["entities"]),
            first_activity=parse_datetime(data["activity"][0]) if data["activity"][0] else None,
            last_activity=parse_datetime(data["activity"][1]) if data["activity"][1] else None,
            # State written before findings carried presentation has none: sinks then fall back to columns.
            title=str(data.get("title") or ""),
            summary=str(data.get("summary") or ""),
            evidence=tuple((str(label), str(column)) for label, column in data.get("evidence") or ()),
            rank=int(data.get("rank", 0)),
        )
