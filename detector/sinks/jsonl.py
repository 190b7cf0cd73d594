"""`jsonl:<path>`: one JSON object per finding, upserted by FindingId, written atomically.

`jsonl:-`, and a target that is not a regular file (a FIFO, a device, /dev/stdout), is a stream: one line
per finding is appended and nothing is read back, so it pipes into jq and never blocks on reading.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from detector.atomicfile import write_atomically
from detector.errors import ConfigError, SinkError, shown
from detector.models import Finding
from detector.sinks import Sink, register_sink

STANDARD_OUTPUT = "-"
_LOCK_POLL_SECONDS = 0.05


def _utf8_json(record: dict[str, Any]) -> bytes:
    """One record as UTF-8 JSON.

    A value UTF-8 cannot carry (a lone surrogate) is written as a JSON escape, so the line stays valid
    UTF-8 JSON and reads back to the same value; it never blocks the other findings.
    """
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True).encode("ascii")


def _line(record: dict[str, Any]) -> str:
    """One JSON line (_utf8_json, as text)."""
    return _utf8_json(record).decode("utf-8") + "\n"


def _encoded_lines(records: Iterable[dict[str, Any] | Finding]) -> Iterator[bytes]:
    """Each record's JSON line as bytes, one record at a time (a Finding's JSON made only then).

    A finding with a huge value (an attacker's multi-megabyte user agent) costs its text and its bytes,
    not the four copies of joining every line into one text and encoding that.
    """
    for record in records:
        yield _utf8_json(record if isinstance(record, dict) else record.to_json())
        yield b"\n"


class JsonlSink(Sink):
    """Keeps one line per finding id: a rerun replaces a finding's line instead of appending a copy.

    The file is rewritten through a temporary file in the same folder and renamed over the old one, so a
    reader never sees a half-written file and a failed run leaves the previous file untouched. Writers
    take an exclusive lock on a sidecar file (`.<name>.lock`, next to the target, removed when released)
    around read-merge-replace, so two processes writing one file lose nothing; the kernel drops the lock
    of a killed process, so a stale lock file never blocks. The file keeps its mode, and a symlink stays
    a symlink (its target is replaced).
    """

    name = "jsonl"

    def __init__(self, path: Path, *, lock_timeout: float = 60.0, stream: TextIO | None = None) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self._stream = stream

    def describe(self) -> str:
        return f"jsonl:{self.path}"

    def deliver(self, findings: Sequence[Finding]) -> None:
        if str(self.path) == STANDARD_OUTPUT:
            self._write_stream(self._stream or sys.stdout, findings, "standard output")
            return
        try:
            if self._is_stream():
                with self.path.open("a", encoding="utf-8") as handle:
                    self._write_stream(handle, findings, str(self.path))
                return
            target = Path(os.path.realpath(self.path))
            with self._locked(target):
                records: dict[str, dict[str, Any] | Finding] = dict(self._read(target))
                for finding in findings:
                    records[finding.id] = finding  # its JSON made as its line is written, not all held at once
                write_atomically(target, _encoded_lines(records.values()), new_file_mode=0o666)
        except OSError as exc:
            raise SinkError(
                f"jsonl:{shown(str(self.path))}: cannot write ({exc.strerror}); check the folder exists and is writable"
            ) from None

    def _is_stream(self) -> bool:
        """Devices and /proc entries are streams even when they resolve to a regular file.

        /dev/stdout redirected to a file must be appended to, not replaced.
        """
        if str(self.path).startswith(("/dev/", "/proc/")):
            return True
        try:
            return not stat.S_ISREG(self.path.stat().st_mode) and not stat.S_ISDIR(self.path.stat().st_mode)
        except FileNotFoundError:
            return False

    def _write_stream(self, handle: TextIO, findings: Sequence[Finding], where: str) -> None:
        try:
            for finding in findings:
                line = _line(finding.to_json())
                try:
                    handle.write(line)
                except UnicodeEncodeError:  # a stream whose encoding is not UTF-8 (a C locale terminal)
                    handle.write(json.dumps(finding.to_json(), ensure_ascii=True) + "\n")
            handle.flush()
        except BrokenPipeError:
            raise SinkError(f"jsonl: {where} was closed before every finding was written") from None

    @contextlib.contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        """Hold an exclusive flock on `.<name>.lock` next to the target; the lock file is removed on release.

        Removing it is safe because a waiter that wins the lock checks that its file is still the one at
        the path (not one unlinked meanwhile) and starts over otherwise.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_path = target.parent / f".{target.name}.lock"
        deadline = time.monotonic() + self.lock_timeout
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise SinkError(
                        f"jsonl:{shown(str(self.path))}: {shown(str(target))} is locked by another writer "
                        f"(held on {lock_path} for over {self.lock_timeout:.0f} s); the findings are retried next run"
                    ) from None
                time.sleep(_LOCK_POLL_SECONDS)
                continue
            held = os.fstat(fd)
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # the previous holder removed this lock file: lock the one at the path now
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()
            os.close(fd)  # closing drops the lock

    def _read(self, target: Path) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        where = f"jsonl:{shown(str(self.path))}"
        try:
            handle = target.open("r", encoding="utf-8")
        except FileNotFoundError:
            return records
        with handle:
            try:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        finding_id = record["FindingId"]
                    except (ValueError, KeyError, TypeError, RecursionError):  # ValueError: a number of 4,300+ digits too
                        finding_id = None
                    if not isinstance(finding_id, str):
                        raise SinkError(
                            f"{where}:{number} is not a findings file line; point the sink at a new file or remove this one"
                        )
                    records[finding_id] = record
            except UnicodeDecodeError:
                raise SinkError(
                    f"{where} is not a findings file (not UTF-8 text); point the sink at a new file or remove this one"
                ) from None
        return records


@register_sink("jsonl")
def _open(argument: str, settings: object) -> Sink:
    if not argument:
        raise ConfigError("--sink", "jsonl needs a path: jsonl:/path/findings.jsonl, or jsonl:- for standard output")
    if "\x00" in argument:
        raise ConfigError("--sink", "the jsonl path holds a NUL character")
    return JsonlSink(Path(argument))
