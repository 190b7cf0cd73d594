"""`file:<folder>`: the state store for the CLI and local runs. One machine, one folder.

Layout: rules/<name>.json (checkpoint, evaluated bins, lease) and outbox/<sink>.json (entries by
finding id). Every file is replaced atomically; read-modify-write sequences are serialised by an
advisory lock on `.lock` (flock), which the kernel releases when its holder dies: a killed run never
leaves the folder locked. Every file is validated when read (StateError naming the file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from detector.atomicfile import write_atomically
from detector.errors import StateError
from detector.kql import format_datetime, parse_datetime
from detector.models import Finding
from detector.state import (
    DELIVERED_RETENTION,
    RESET_HINT,
    LeaseLostError,
    OutboxEntry,
    RuleState,
    StateStore,
    check_lease_expiry,
    finding_from_state,
    lease_is_held,
)

# How long a run waits for another live process's short critical section before it gives up.
_MUTEX_WAIT_SECONDS = 30.0
_OUTBOX_HINT = "restore it from a backup; deleting it drops the findings it still holds for that sink"


def _file_name(name: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.json"


def _lock(handle: IO[str], blocking: bool) -> bool:
    """Take the advisory lock on an open file; False when another holder has it and blocking is False."""
    if sys.platform == "win32":  # pragma: no cover - Azure Functions for Python runs on Linux
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


class FileStateStore(StateStore):
    """State in a local folder."""

    def __init__(self, folder: str | Path, mutex_wait: float = _MUTEX_WAIT_SECONDS) -> None:
        self.folder = Path(folder)
        self.mutex_wait = mutex_wait

    def describe(self) -> str:
        return f"file:{self.folder}"

    # -- plumbing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        """A short critical section across processes and threads: flock on `.lock`.

        The kernel releases it when its holder dies, so a killed run never blocks the next.
        """
        lock = self.folder / ".lock"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = lock.open("a+", encoding="utf-8")
        except OSError as exc:
            raise StateError(
                str(self.folder),
                f"cannot be used as the state folder ({exc.strerror or exc})",
                "point DETECTOR_STATE at a folder",
            ) from None
        with handle:
            deadline = time.monotonic() + self.mutex_wait
            while not _lock(handle, blocking=False):
                if time.monotonic() >= deadline:  # >=: a mutex_wait of 0 gives up at once
                    handle.seek(0)
                    holder = handle.read(200).strip() or "another process"
                    raise StateError(
                        str(lock),
                        f"held by {holder} for over {self.mutex_wait:.0f} s (a live process: a dead one holds no lock)",
                        "wait for that process to finish, or stop it",
                    )
                time.sleep(0.01)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")  # who holds it, for the message above
            handle.flush()
            yield  # the lock goes with the handle's close

    def _read(self, path: Path, hint: str = RESET_HINT) -> dict[str, Any]:
        """The JSON object a state file holds ({} when there is none); `hint`: what to do when it is damaged."""
        try:
            text = path.read_bytes().decode("utf-8")
            data = json.loads(text)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StateError(str(path), f"is unreadable ({exc.strerror or exc})", hint) from None
        except UnicodeDecodeError as exc:
            raise StateError(str(path), f"is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})", hint) from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number of 4,300+ digits
            raise StateError(str(path), f"is not valid JSON ({str(exc)[:100]})", hint) from None
        if not isinstance(data, dict):
            raise StateError(str(path), f"holds a JSON {type(data).__name__}, not an object", hint)
        return data

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        try:
            write_atomically(path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            raise StateError(
                str(path), f"cannot be written ({exc.strerror or exc})", "check the state folder's files and permissions"
            ) from None

    def _rule_path(self, name: str) -> Path:
        return self.folder / "rules" / _file_name(name)

    def _outbox_path(self, sink: str) -> Path:
        return self.folder / "outbox" / _file_name(sink)

    # -- lease and checkpoint ---------------------------------------------------------------------
    def _lease(self, path: Path, data: dict[str, Any]) -> tuple[str, datetime] | None:
        lease = data.get("lease")
        if lease is None:
            return None
        if not (isinstance(lease, dict) and isinstance(lease.get("owner"), str) and isinstance(lease.get("expires"), str)):
            raise StateError(str(path), "'lease' is not {owner, expires} or null", "set it to null if no run is active")
        try:
            return lease["owner"], parse_datetime(lease["expires"])
        except ValueError:
            raise StateError(
                str(path), f"lease expiry '{lease['expires'][:40]}' is not a date", "set 'lease' to null if no run is active"
            ) from None

    def acquire_lease(self, name: str, owner: str, ttl: timedelta, now: datetime) -> bool:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            held = self._lease(path, data)
            if held is not None:
                check_lease_expiry(str(path), held[0] if held[0] != owner else "", held[1], now)
                if lease_is_held(held[0], held[1], owner, now):
                    return False
            data["lease"] = {"owner": owner, "expires": format_datetime(now + ttl)}
            self._write(path, data)
            return True

    def lease_holder(self, name: str) -> tuple[str, datetime] | None:
        path = self._rule_path(name)
        return self._lease(path, self._read(path))

    def release_lease(self, name: str, owner: str) -> None:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            held = self._lease(path, data)
            if held is not None and held[0] == owner:
                data["lease"] = None
                self._write(path, data)

    def load_rule_state(self, name: str, time_bin: timedelta) -> RuleState:
        path = self._rule_path(name)
        return RuleState.from_json(self._read(path).get("state"), time_bin, str(path))

    def save_rule_state(self, name: str, state: RuleState, owner: str) -> None:
        with self._mutex():
            path = self._rule_path(name)
            data = self._read(path)
            held = self._lease(path, data)
            if held is None or held[0] != owner:
                raise LeaseLostError(f"lease on {name} was taken by another run; this run stops writing its state")
            data["state"] = state.to_json()
            self._write(path, data)

    # -- outbox -------------------------------------------------------------------------------------
    def _outbox(self, sink: str, create: bool) -> tuple[Path, dict[str, Any]]:
        path = self._outbox_path(sink)
        data = self._read(path, _OUTBOX_HINT)
        if not data:
            if not create:
                return path, {}
            data = {"sink": sink, "id": str(uuid.uuid4()), "entries": {}}
        entries = data.get("entries")
        if not isinstance(entries, dict) or not isinstance(data.get("id", ""), str):
            raise StateError(str(path), "is not an outbox ({id, entries: {finding id: entry}})", _OUTBOX_HINT)
        data.setdefault("id", "")  # outboxes written before ids existed
        for fid, entry in entries.items():
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("digest"), str)
                and isinstance(entry.get("delivered_digest"), str | None)
                and isinstance(entry.get("finding"), dict)
                and isinstance(entry.get("attempts", 0), int)
                and isinstance(entry.get("parked", False), bool)
            ):
                raise StateError(f"{path} entry {fid[:80]}", "is not {finding, digest, delivered_digest, attempts}", _OUTBOX_HINT)
        return path, data

    def outbox_id(self, sink: str) -> str | None:
        _, data = self._outbox(sink, create=False)
        return str(data["id"]) if data else None

    def stage(self, sinks: Sequence[str], findings: Iterable[Finding]) -> int:
        findings = list(findings)
        staged = 0
        with self._mutex():
            for sink in sinks:
                path, data = self._outbox(sink, create=True)
                for finding in findings:
                    digest = finding.digest()
                    old = data["entries"].get(finding.id)
                    if old and old["digest"] == digest:
                        continue  # unchanged: delivered stays delivered, pending (or parked) stays so
                    delivered = old["delivered_digest"] if old else None
                    data["entries"][finding.id] = {"finding": finding.to_state(), "digest": digest, "delivered_digest": delivered}
                    staged += delivered != digest
                self._write(path, data)
        return staged

    def _entries(self, sink: str) -> list[OutboxEntry]:
        path, data = self._outbox(sink, create=False)
        return [
            OutboxEntry(
                sink,
                finding_from_state(raw["finding"], f"{path} entry {fid[:80]}"),
                raw["digest"],
                raw["delivered_digest"],
                raw.get("attempts", 0),
                raw.get("parked", False),
                str(raw.get("error", "")),
            )
            for fid, raw in data.get("entries", {}).items()
        ]

    def pending(self, sink: str) -> list[OutboxEntry]:
        return sorted((e for e in self._entries(sink) if e.pending), key=lambda e: (e.finding.window.start, e.finding.id))

    def parked(self, sink: str) -> list[OutboxEntry]:
        return [e for e in self._entries(sink) if e.parked]

    def mark_delivered(self, sink: str, entries: Iterable[OutboxEntry], now: datetime) -> None:
        with self._mutex():
            path, data = self._outbox(sink, create=True)
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

    def record_rejections(self, sink: str, rejected: Mapping[str, tuple[OutboxEntry, str]], limit: int) -> list[OutboxEntry]:
        parked: list[OutboxEntry] = []
        with self._mutex():
            path, data = self._outbox(sink, create=True)
            for fid, (entry, error) in rejected.items():
                current = data["entries"].get(fid)
                if not current or current["digest"] != entry.digest:
                    continue  # changed meanwhile: the new version gets its own attempts
                current["attempts"] = current.get("attempts", 0) + 1
                current["error"] = error[:500]
                if current["attempts"] >= limit:
                    current["parked"] = True
                    parked.append(
                        OutboxEntry(sink, entry.finding, entry.digest, entry.delivered_digest, current["attempts"], True, error)
                    )
            self._write(path, data)
        return parked
