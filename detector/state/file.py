"""`file:<folder>`: the state store for the CLI and local runs. One machine, one folder.

Layout: rules/<name>.json (checkpoint, evaluated bins, lease) and outbox/<sink>.json (entries by
finding id). Every file is replaced atomically; read-modify-write sequences are serialised by a lock
file, so two processes on the same machine (a timer and a manual run) cannot interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from detector.atomicfile import write_atomically
from detector.errors import DetectorError
from detector.kql import format_datetime, parse_datetime
from detector.models import Finding
from detector.state import DELIVERED_RETENTION, LeaseLostError, OutboxEntry, RuleState, StateStore

_MUTEX_STALE_SECONDS = 60.0


def _file_name(name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.json"


class FileStateStore(StateStore):
    """State in a local folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return f"file:{self.folder}"

    # -- plumbing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """A short critical section across processes: an exclusively created lock file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / ".lock"
        deadline = time.monotonic() + 30
        while True:
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.close(fd)
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - lock.stat().st_mtime > _MUTEX_STALE_SECONDS:  # left by a killed process
                        lock.unlink()
                        continue
                if time.monotonic() > deadline:
                    raise DetectorError(
                        f"state folder {self.folder} is locked by {lock}; remove it if no run is active"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise DetectorError(f"state file {path} is unreadable ({exc}); restore it or delete it to start over") from None
        return data

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True))

    def _rule_path(self, name: str) -> Path:
        return self.folder / "rules" / _file_name(name)

    def _outbox_path(self, sink: str) -> Path:
        return self.folder / "outbox" / _file_name(sink)

    # -- lease and checkpoint ---------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            lease = data.get("lease") or {}
            if lease.get("owner") not in (None, owner) and parse_datetime(lease["expires"]) > now:
                return False
            data["lease"] = {"owner": owner, "expires": format_datetime(now + ttl)}
            self._write(path, data)
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            if (data.get("lease") or {}).get("owner") == owner:
                data["lease"] = None
                self._write(path, data)

    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        return RuleState.from_json(self._read(self._rule_path(name)).get("state"), time_bin)

    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            if (data.get("lease") or {}).get("owner") != owner:
                raise LeaseLostError(f"lease on {name} was taken by another run; this run stops writing its state")
            data["state"] = state.to_json()
            self._write(path, data)

    # -- outbox -------------------------------------------------------------------------------------
    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        findings = list(findings)
        staged = 0
        with self._mutex():
            for sink in sinks:
                path = self._outbox_path(sink)
                data = self._read(path) or {"sink": sink, "entries": {}}
                for finding in findings:
                    digest = finding.digest()
                    old = data["entries"].get(finding.id)
                    if old and old["digest"] == digest:
                        continue  # unchanged: delivered stays delivered, pending stays pending
                    delivered = old["delivered_digest"] if old else None
                    data["entries"][finding.id] = {"finding": finding.to_state(), "digest": digest, "delivered_digest": delivered}
                    staged += delivered != digest
                self._write(path, data)
        return staged

    def pending(self, sink: str) -> list[OutboxEntry]:
        entries = [self._entry(sink, e) for e in self._read(self._outbox_path(sink)).get("entries", {}).values()]
        return sorted((e for e in entries if e.pending), key=lambda e: (e.finding.window.start, e.finding.id))

    @staticmethod
    def _entry(sink: str, raw: dict[str, Any]) -> OutboxEntry:
        return OutboxEntry(sink, Finding.from_state(raw["finding"]), raw["digest"], raw["delivered_digest"])

    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        with self._mutex():
            path = self._outbox_path(sink)
            data = self._read(path) or {"sink": sink, "entries": {}}
            for entry in entries:
                current = data["entries"].get(entry.finding.id)
                # Only the version that was delivered is marked; a newer staged version stays pending.
                if current and current["digest"] == entry.digest:
                    current["delivered_digest"] = entry.digest
            cutoff = now - DELIVERED_RETENTION
            data["entries"] = {
                fid: e
                for fid, e in data["entries"].items()
                if e["delivered_digest"] != e["digest"] or parse_datetime(e["finding"]["window"][1]) >= cutoff
            }
            self._write(path, data)
