"""`scheduled --dry-run`: the scheduled run's plan, reads and evaluation, with no state written and nothing sent.

The real runner runs unchanged over two stand-ins:
- a state store that reads the real one and keeps every write in memory (an overlay): leases are granted
  without being written, checkpoints and outbox entries live only as long as the run;
- sinks that record what they would have been given, under the real sinks' names.

For a `file:` state folder the overlay starts from a copy of the folder in a temporary directory, so what
would be staged and delivered is exact (the copy knows which findings were already delivered unchanged).
For Table Storage the overlay can only see pending entries: a finding already delivered unchanged is
counted as staged and listed as delivered again, which a real run would not do; the report says so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from detector.errors import StateError
from detector.models import Finding
from detector.sinks import Sink
from detector.state import OutboxEntry, RuleState, StateStore


class OverlayStore(StateStore):
    """Reads `inner`; every write stays in memory. Never writes to `inner`."""

    exact = False

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.states: dict[str, RuleState] = {}
        self.outbox: dict[str, dict[str, OutboxEntry]] = {}  # sink -> finding id -> entry
        self.delivered: dict[str, set[tuple[str, str]]] = {}  # sink -> (finding id, digest) marked delivered

    def describe(self) -> str:
        return f"{self.inner.describe()} (read only)"

    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        return True  # a dry run takes no lease: it writes nothing another run could clash with

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        return None  # leases are granted without being written, so none is ever held

    def release_lease(self, name: str, owner: str) -> None:
        return None

    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        if name in self.states:
            return self.states[name]
        return self.inner.load_rule_state(name, time_bin)

    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        self.states[name] = state

    def _entries(self, sink: str) -> dict[str, OutboxEntry]:
        if sink not in self.outbox:
            self.outbox[sink] = {e.finding.id: e for e in self.inner.pending(sink)}
        return self.outbox[sink]

    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        findings = list(findings)
        staged = 0
        for sink in sinks:
            entries = self._entries(sink)
            for finding in findings:
                digest = finding.digest()
                old = entries.get(finding.id)
                if old is not None and old.digest == digest:
                    continue
                entries[finding.id] = OutboxEntry(sink, finding, digest, None)
                staged += 1
        return staged

    def outbox_id(self, sink: str) -> str | None:
        return self.inner.outbox_id(sink)

    def parked(self, sink: str) -> list[OutboxEntry]:
        return self.inner.parked(sink)

    def record_rejections(self, sink: str, rejected: Mapping[str, tuple[OutboxEntry, str]], limit: int) -> list[OutboxEntry]:
        return []  # the recording sinks of a dry run reject nothing, and a dry run parks nothing

    def pending(self, sink: str) -> list[OutboxEntry]:
        done = self.delivered.get(sink, set())
        entries = [e for e in self._entries(sink).values() if (e.finding.id, e.digest) not in done]
        return sorted(entries, key=lambda e: (e.finding.window.start, e.finding.id))

    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        self.delivered.setdefault(sink, set()).update((e.finding.id, e.digest) for e in entries)


class RecordingSink(Sink):
    """Stands in for a real sink under its name; keeps what it would have delivered."""

    name = "dry-run"

    def __init__(self, real: Sink) -> None:
        self.real_name = real.describe()
        self.findings: list[Finding] = []

    def describe(self) -> str:
        return self.real_name

    def deliver(self, findings: Sequence[Finding]) -> None:
        self.findings.extend(findings)


@contextmanager
def dry_store(real: StateStore) -> Iterator[StateStore]:
    """A store for a dry run over `real`: a throw-away copy of a state folder, else an in-memory overlay."""
    from detector.state.file import FileStateStore

    if isinstance(real, FileStateStore):
        with tempfile.TemporaryDirectory(prefix="detector-dry-run-") as scratch:
            copy = Path(scratch) / "state"
            if real.folder.is_dir():
                # The lock file belongs to a live run of the real folder, not to the copy.
                shutil.copytree(real.folder, copy, ignore=shutil.ignore_patterns(".lock"))
                _drop_leases(copy)
            try:
                yield FileStateStore(copy)
            except StateError as exc:  # a damaged record of the copy is one of the real folder: named so
                exc.args = tuple(str(arg).replace(str(copy), str(real.folder)) for arg in exc.args)
                exc.where = exc.where.replace(str(copy), str(real.folder))
                raise
        return
    yield OverlayStore(real)


def _drop_leases(folder: Path) -> None:
    """Free the copied leases: a live run's lease must not make the dry run step aside from a copy."""
    for path in (folder / "rules").glob("*.json"):
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # damaged: left as it is, for the store to name when the run reads it
        if isinstance(data, dict) and data.get("lease"):
            data["lease"] = None
            path.write_text(json.dumps(data), encoding="utf-8")
