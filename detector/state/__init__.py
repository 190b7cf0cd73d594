"""Durable run state: per-rule checkpoint and evaluated bins, a lease, and the outbox of findings per sink.

Two stores implement one interface: a local folder (default for the CLI and local runs) and Azure Table
Storage (production). The runner's order of work makes every crash safe:

    evaluate a window -> stage its findings in the outbox -> advance the checkpoint -> deliver -> mark delivered

The checkpoint is never ahead of stored findings, so a crash loses nothing; a finding staged but not
marked delivered is delivered again by the next run, and sinks upsert by the finding's stable id, so it
is never duplicated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from detector.errors import ConfigError, DetectorError
from detector.kql import format_datetime, parse_datetime
from detector.models import Finding

if TYPE_CHECKING:
    from detector.config import Settings

# A delivered finding is remembered this long after its bin, so an unchanged re-evaluation (late-data
# re-check, a backfill over recent days) is recognised and not sent again.
DELIVERED_RETENTION = timedelta(days=30)


class LeaseLostError(DetectorError):
    """Another run took this rule's lease (ours expired); this run must stop writing state."""


@dataclass
class RuleState:
    """What the store keeps per rule (or per backfill): checkpoint and when each recent bin was evaluated."""

    time_bin: timedelta
    checkpoint: datetime | None = None
    evaluated: dict[datetime, datetime] = field(default_factory=dict)  # bin start -> when it was evaluated

    def to_json(self) -> dict[str, Any]:
        """JSON form; runs of consecutive bins evaluated at the same time are stored as one range."""
        ranges: list[tuple[datetime, datetime, datetime]] = []  # (first bin, last bin, evaluated at)
        for bin_start in sorted(self.evaluated):
            at = self.evaluated[bin_start]
            if ranges and ranges[-1][2] == at and ranges[-1][1] + self.time_bin == bin_start:
                ranges[-1] = (ranges[-1][0], bin_start, at)
            else:
                ranges.append((bin_start, bin_start, at))
        return {
            "checkpoint": format_datetime(self.checkpoint) if self.checkpoint else None,
            "evaluated": [[format_datetime(a), format_datetime(b), format_datetime(c)] for a, b, c in ranges],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, time_bin: timedelta) -> RuleState:
        if not data:
            return cls(time_bin)
        evaluated: dict[datetime, datetime] = {}
        for first, last, at in data.get("evaluated", []):
            moment, end, when = parse_datetime(first), parse_datetime(last), parse_datetime(at)
            while moment <= end:
                evaluated[moment] = when
                moment += time_bin
        checkpoint = data.get("checkpoint")
        return cls(time_bin, parse_datetime(checkpoint) if checkpoint else None, evaluated)


@dataclass(frozen=True)
class OutboxEntry:
    """A finding waiting for (or already given to) one sink."""

    sink: str
    finding: Finding
    digest: str
    delivered_digest: str | None

    @property
    def pending(self) -> bool:
        return self.delivered_digest != self.digest


class StateStore(ABC):
    """Checkpoint, lease and outbox storage. Every write is atomic on its own."""

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        """Take or renew the lease `name` for `owner` until now + ttl; False when another owner holds it."""

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back (no-op when not held by owner)."""

    @abstractmethod
    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        """The state of a rule (or backfill) `name`."""

    @abstractmethod
    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        """Store the state; raise LeaseLostError unless `owner` still holds the lease `name`."""

    @abstractmethod
    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        """Put findings in the outbox of every sink; an unchanged, delivered finding stays delivered.

        Returns how many (sink, finding) entries became pending.
        """

    @abstractmethod
    def pending(self, sink: str) -> list[OutboxEntry]:
        """Entries not yet delivered (or changed since delivered) to a sink, oldest bin first."""

    @abstractmethod
    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        """Record that these entries reached the sink; prune delivered entries past retention."""

    def describe(self) -> str:
        return type(self).__name__


def open_state_store(settings: Settings | None, spec: str | None = None) -> StateStore:
    """The store DETECTOR_STATE names: `file:<folder>` or `table` (Azure Table Storage)."""
    spec = spec if spec is not None else (settings.state if settings else "file:.detector-state")
    scheme, _, argument = spec.partition(":")
    if scheme == "file" and argument:
        from detector.state.file import FileStateStore

        return FileStateStore(argument)
    if scheme == "table" and not argument:
        if settings is None or not settings.state_table_endpoint:
            raise ConfigError("DETECTOR_STATE_TABLE_ENDPOINT", "is required when DETECTOR_STATE is 'table'")
        from detector.state.table import TableStateStore

        return TableStateStore.from_settings(settings)
    raise ConfigError("DETECTOR_STATE", f"'{spec}' is not file:<folder> or table")
