"""Durable run state: per-rule checkpoint and evaluated bins, a lease, and the outbox of findings per sink.

Two stores implement one interface: a local folder (default for the CLI and local runs) and Azure Table
Storage (production). The runner's order of work makes every crash safe:

    evaluate a window -> stage its findings in the outbox -> advance the checkpoint -> deliver -> mark delivered

The checkpoint is never ahead of stored findings, so a crash loses nothing; a finding staged but not
marked delivered is delivered again by the next run, and sinks upsert by the finding's stable id, so it
is never duplicated.

Every record is validated when read: a record that does not hang together (wrong types, garbage, a
checkpoint in the future, a lease far beyond any lease a run takes, an outbox missing while a rule's
state says findings were staged in it) raises StateError naming the record and what to do.
"""

from __future__ import annotations

import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import ConfigError, DetectorError, StateError
from detector.kql import format_datetime, parse_datetime, plain_int
from detector.models import Finding

if TYPE_CHECKING:
    from detector.config import Settings

# A delivered finding is remembered this long after its bin, so an unchanged re-evaluation (late-data
# re-check, a backfill over recent days) is recognised and not sent again.
DELIVERED_RETENTION = timedelta(days=30)
# No run takes a lease longer than this (runs take 2 minutes and renew it); a lease further ahead was not
# written by a run and would block the rule for as long as it says.
LONGEST_LEASE = timedelta(hours=1)
RESET_HINT = "restore it from a backup, or delete it to start that rule over from its queryPeriod"


class LeaseLostError(DetectorError):
    """Another run took this rule's lease (ours expired); this run must stop writing state."""


# -- who holds a lease --------------------------------------------------------------------------------
# A lease owner is "<uuid>@<host>/<pid>/<process start>". The host part names this machine and kernel
# (hostname, boot id, pid namespace), so a holder whose pid is gone, or reused by a younger process, on
# this very host is known to be dead at once; a holder elsewhere is trusted until its lease lapses.


@cache
def _host_identity() -> str:
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id",):
        try:
            parts.append(Path(path).read_text(encoding="ascii").strip()[:36])
        except OSError:
            parts.append("")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("")
    return "|".join(p.replace("/", "_").replace("@", "_") for p in parts)


def process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, from /proc): '-' when it is gone, '' when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return "-"
    except OSError:
        return ""
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def new_owner() -> str:
    """A lease owner id for this run that says which process on which host holds the lease."""
    pid = os.getpid()
    return f"{uuid.uuid4()}@{_host_identity()}/{pid}/{process_start(pid)}"


def holder_is_dead(owner: str) -> bool:
    """True when `owner` is a process of this host that no longer runs (its lease can be taken at once)."""
    _, at, where = owner.partition("@")
    host, _, process = where.partition("/")
    pid_text, _, started = process.partition("/")
    pid = plain_int(pid_text, 9)
    if not at or host != _host_identity() or pid is None:
        return False  # another host (or an owner without a process): trusted until its lease lapses
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user
    now_started = process_start(pid)
    return now_started == "-" or bool(started and now_started and now_started != started)


def lease_is_held(owner: str, expires: datetime, by_other_than: str, now: datetime) -> bool:
    """Whether a lease stops `by_other_than` from taking it: a live foreign holder whose lease has not lapsed."""
    return bool(owner) and owner != by_other_than and expires > now and not holder_is_dead(owner)


def check_lease_expiry(where: str, owner: str, expires: datetime, now: datetime) -> None:
    """A lease further ahead than any run takes is not a run's: one clear error instead of a silent stall."""
    if owner and expires > now + LONGEST_LEASE:
        raise StateError(
            where,
            f"lease held by {owner} until {format_datetime(expires)}, further ahead than any run takes one ({LONGEST_LEASE})",
            "if no run is active, remove the lease (set it to null, or clear LeaseOwner) and run again",
        )


# -- records ------------------------------------------------------------------------------------------


def _datetime(value: Any, where: str, what: str) -> datetime:
    if not isinstance(value, str):
        raise StateError(where, f"{what} is {type(value).__name__}, not a date string", RESET_HINT)
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise StateError(where, f"{what} '{value[:40]}' is not a date ({exc})", RESET_HINT) from None


@dataclass
class RuleState:
    """What the store keeps per rule (or per backfill): checkpoint and when each recent bin was evaluated.

    `outboxes` maps each sink this rule staged findings for to the id of that sink's outbox, so an outbox
    that went missing (or was replaced by an empty one) is noticed instead of its pending findings
    vanishing silently.
    """

    time_bin: timedelta
    checkpoint: datetime | None = None
    evaluated: dict[datetime, datetime] = field(default_factory=dict)  # bin start -> when it was evaluated
    outboxes: dict[str, str] = field(default_factory=dict)  # sink -> outbox id
    where: str = field(default="", compare=False, repr=False)  # the record it was read from, for errors

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
            "outboxes": dict(sorted(self.outboxes.items())),
        }

    @classmethod
    def from_json(cls, data: Any, time_bin: timedelta, where: str = "rule state") -> RuleState:
        """Parse and validate the JSON form; StateError naming `where` when it does not hang together."""
        if not data:
            return cls(time_bin, where=where)
        if not isinstance(data, dict):
            raise StateError(where, f"the state is {type(data).__name__}, not an object", RESET_HINT)
        ranges = data.get("evaluated", [])
        if not isinstance(ranges, list):
            raise StateError(where, "'evaluated' is not a list", RESET_HINT)
        evaluated: dict[datetime, datetime] = {}
        for item in ranges:
            if not (isinstance(item, list) and len(item) == 3):
                raise StateError(
                    where, f"'evaluated' holds {str(item)[:60]}, not [first bin, last bin, evaluated at]", RESET_HINT
                )
            moment, end, when = (_datetime(v, where, "an evaluated bin") for v in item)
            if end < moment or (end - moment) / time_bin > 100_000:
                raise StateError(where, f"evaluated range {item[0]}..{item[1]} is reversed or implausibly long", RESET_HINT)
            while moment <= end:
                evaluated[moment] = when
                moment += time_bin
        checkpoint = data.get("checkpoint")
        outboxes = data.get("outboxes", {})
        if not (isinstance(outboxes, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in outboxes.items())):
            raise StateError(where, "'outboxes' is not an object of sink -> outbox id", RESET_HINT)
        parsed = _datetime(checkpoint, where, "checkpoint") if checkpoint is not None else None
        return cls(time_bin, parsed, evaluated, outboxes, where)

    def check_against(self, now: datetime, where: str) -> None:
        """A checkpoint after now was not written by a run of this clock: the rule would stall silently."""
        if self.checkpoint is not None and self.checkpoint > now:
            raise StateError(
                self.where or where,
                f"checkpoint {format_datetime(self.checkpoint)} is after now ({format_datetime(now)}): nothing would be "
                "evaluated until then",
                "if the clock is right, set the checkpoint to the last window really evaluated (or delete the state "
                "to start over from the rule's queryPeriod)",
            )


@dataclass(frozen=True)
class OutboxEntry:
    """A finding waiting for (or already given to) one sink.

    `attempts` counts deliveries the sink rejected for this very finding (not outages of the sink); at
    MAX_REJECTIONS the entry is `parked`: kept, reported, and no longer offered until it changes.
    """

    sink: str
    finding: Finding
    digest: str
    delivered_digest: str | None
    attempts: int = 0
    parked: bool = False
    error: str = ""

    @property
    def pending(self) -> bool:
        return self.delivered_digest != self.digest and not self.parked


# A finding a sink rejected this many times (over as many runs) is parked.
MAX_REJECTIONS = 3


def finding_from_state(raw: Any, where: str) -> Finding:
    """Finding.from_state with the record validated: StateError naming `where` instead of a KeyError."""
    try:
        finding = Finding.from_state(raw)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise StateError(
            where,
            f"the stored finding is malformed ({type(exc).__name__}: {str(exc)[:80]})",
            "restore the outbox from a backup; to drop this finding, delete the entry and re-run a backfill over its window",
        ) from None
    return finding


class StateStore(ABC):
    """Checkpoint, lease and outbox storage. Every write is atomic on its own."""

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        """Take or renew the lease `name` for `owner` until now + ttl; False when another live owner holds it.

        A lease whose holder is a dead process of this host is taken at once.
        """

    @abstractmethod
    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        """Who holds the lease `name` and until when (None when nobody does)."""

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back (no-op when not held by owner)."""

    @abstractmethod
    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        """The state of a rule (or backfill) `name`; StateError when it does not validate."""

    @abstractmethod
    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        """Store the state; raise LeaseLostError unless `owner` still holds the lease `name`."""

    @abstractmethod
    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        """Put findings in the outbox of every sink; an unchanged, delivered finding stays delivered.

        Returns how many (sink, finding) entries became pending.
        """

    @abstractmethod
    def outbox_id(self, sink: str) -> str | None:
        """The id the sink's outbox got when it was created (None when it does not exist)."""

    @abstractmethod
    def pending(self, sink: str) -> list[OutboxEntry]:
        """Entries not yet delivered (or changed since delivered) and not parked, oldest bin first."""

    @abstractmethod
    def parked(self, sink: str) -> list[OutboxEntry]:
        """Entries parked after repeated rejections: kept and reported, not offered again until they change."""

    @abstractmethod
    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        """Record that these entries reached the sink; prune delivered entries past retention."""

    @abstractmethod
    def record_rejections(self, sink: str, rejected: Mapping[str, tuple[OutboxEntry, str]], limit: int) -> list[OutboxEntry]:
        """Count one rejection for each entry (finding id -> (entry, error)); park those reaching `limit`.

        Only the version that was rejected is counted (a newer staged version starts again from 0).
        Returns the entries parked now.
        """

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
