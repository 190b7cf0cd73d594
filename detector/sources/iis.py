"""`iis:<path>`: IIS W3C extended log files (u_exYYMMDD.log), a file or a folder searched recursively.

Mapping to W3CIISLog columns (reference/kql-and-sentinel.md §1.3-1.4): date + time (always UTC in W3C
logs) make TimeGenerated; each field maps to its column; a `-` placeholder is kept as "-" in string
columns (as W3CIISLog stores it) and is null in numeric ones; a field the log does not select is "" (or
null for numbers). A `#Fields` directive may appear again mid-file and applies from there on. Computer
is not in the log: it is the machine the logs come from (--computer, default this host's name).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from detector.errors import InputError
from detector.models import Row, Window
from detector.sources import ReadRequest, Source, files_changed_after, register_source
from detector.w3ciislog import COLUMN_TYPES

FIELD_TO_COLUMN: dict[str, str] = {
    "c-ip": "cIP",
    "s-sitename": "sSiteName",
    "s-computername": "sComputerName",
    "s-ip": "sIP",
    "s-port": "sPort",
    "cs-method": "csMethod",
    "cs-uri-stem": "csUriStem",
    "cs-uri-query": "csUriQuery",
    "cs-username": "csUserName",
    "cs(user-agent)": "csUserAgent",
    "cs(referer)": "csReferer",
    "cs(cookie)": "csCookie",
    "cs-host": "csHost",
    "cs-version": "csVersion",
    "sc-status": "scStatus",
    "sc-substatus": "scSubStatus",
    "sc-win32-status": "scWin32Status",
    "sc-bytes": "scBytes",
    "cs-bytes": "csBytes",
    "time-taken": "TimeTaken",
}


def _field_of(column: str) -> str:
    return next(field for field, name in FIELD_TO_COLUMN.items() if name == column)


class IisLogSource(Source):
    """Rows from IIS W3C log files."""

    def __init__(self, path: Path, computer: str) -> None:
        self.path = path
        self.computer = computer or socket.gethostname()

    def describe(self) -> str:
        return f"iis:{self.path} (Computer={self.computer})"

    def files(self) -> list[Path]:
        """The log files to read: the file itself, or every *.log below the folder, in name order."""
        if self.path.is_file():
            return [self.path]
        if self.path.is_dir():
            found = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() == ".log")
            if not found:
                raise InputError(str(self.path), "folder holds no *.log files; point iis: at an IIS log folder")
            return found
        raise InputError(str(self.path), "no such file or folder; check the path after 'iis:'")

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        # Files carry no ingestion time: if any changed since, every bin of the window is re-checked.
        return None if files_changed_after(self.files(), ingested_after) else set()

    def read(self, request: ReadRequest) -> Iterator[Row]:
        spec = request.candidates
        if spec is not None:
            from detector.sources.iis_candidates import pushdown_applies, read_candidate_rows
            from detector.sources.jsonl_candidates import Unavailable

            if pushdown_applies(spec):
                try:
                    candidate_rows = read_candidate_rows(self, request, spec)
                except Unavailable:
                    pass  # the plain path below gives the same result, only slower
                else:
                    yield from candidate_rows
                    return
        for path in self.files():
            yield from self._read_file(path, request)

    def _read_file(self, path: Path, request: ReadRequest) -> Iterator[Row]:
        layout = W3cLayout.initial(path, request, self.computer)
        times: dict[str, datetime] = {}  # W3C times have second precision: parse each distinct one once
        try:
            handle = path.open("r", encoding="utf-8-sig", errors="replace", newline=None)
        except OSError as exc:
            raise InputError(str(path), f"cannot open ({exc.strerror})") from None
        with handle:
            for number, raw_line in enumerate(handle, start=1):
                line = raw_line.rstrip("\r\n")
                if not line:
                    continue
                if line.startswith("#"):
                    layout = layout.directive(line, number)
                    continue
                row = layout.entry(line, number, times)
                if row is not None:
                    yield row


@dataclass(frozen=True)
class W3cLayout:
    """What the directives read so far say about the entries that follow (#Fields, #Date)."""

    path: Path
    request: ReadRequest
    computer: str
    wanted: tuple[str, ...]  # the columns to fill from fields (all requested but TimeGenerated, Computer)
    numeric: frozenset[str]
    fields: tuple[str, ...] | None = None
    plan: tuple[tuple[str, int | None], ...] = ()  # (column, index in the entry or None when not logged)
    date_index: int | None = None
    time_index: int | None = None
    directive_date: str = ""

    @classmethod
    def initial(cls, path: Path, request: ReadRequest, computer: str) -> W3cLayout:
        """The layout before the file's first directive."""
        wanted = tuple(c for c in request.columns if c not in ("TimeGenerated", "Computer"))
        numeric = frozenset(c for c in wanted if COLUMN_TYPES.get(c) in ("int", "long"))
        return cls(path, request, computer, wanted, numeric)

    def directive(self, line: str, number: int) -> W3cLayout:
        """The layout after one directive line (`#Name: value`)."""
        name, _, value = line[1:].partition(":")
        name = name.strip().lower()
        if name == "fields":
            fields = value.split()
            lowered = [f.lower() for f in fields]
            if "time" not in lowered:
                raise InputError(f"{self.path}:{number}", "#Fields has no 'time' field; TimeGenerated cannot be known")
            index_of = {FIELD_TO_COLUMN[f]: i for i, f in enumerate(lowered) if f in FIELD_TO_COLUMN}
            missing = [c for c in self.request.required if c in self.wanted and c not in index_of]
            if missing:
                raise InputError(
                    f"{self.path}:{number}",
                    f"#Fields lacks what the rule needs: {', '.join(missing)} "
                    f"(enable {', '.join(_field_of(c) for c in missing)} in IIS logging)",
                )
            return replace(
                self,
                fields=tuple(fields),
                plan=tuple((c, index_of.get(c)) for c in self.wanted),
                time_index=lowered.index("time"),
                date_index=lowered.index("date") if "date" in lowered else None,
            )
        if name == "date":
            return replace(self, directive_date=value.strip().split(" ")[0])
        return self

    def entry(self, line: str, number: int, times: dict[str, datetime]) -> Row | None:
        """One log entry as a typed row, or None when it falls outside the window."""
        path, fields = self.path, self.fields
        if fields is None:
            raise InputError(f"{path}:{number}", "log entry before any #Fields directive; is this an IIS W3C log?")
        values = line.split(" ")
        if len(values) != len(fields):
            raise InputError(f"{path}:{number}", f"has {len(values)} fields but #Fields declares {len(fields)}")
        day = values[self.date_index] if self.date_index is not None else self.directive_date
        stamp = f"{day} {values[self.time_index]}"  # type: ignore[index]
        moment = times.get(stamp)
        if moment is None:
            try:
                moment = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            except ValueError:
                raise InputError(f"{path}:{number}", f"date/time '{stamp}' is not yyyy-mm-dd hh:mm:ss") from None
            if len(times) > 100_000:
                times.clear()
            times[stamp] = moment
        if not self.request.window.start <= moment < self.request.window.end:
            return None
        row: Row = {"TimeGenerated": moment, "Computer": self.computer}
        numeric = self.numeric
        for column, index in self.plan:
            if index is None:
                row[column] = None if column in numeric else ""
            elif column in numeric:
                text = values[index]
                if text == "-":
                    row[column] = None
                elif text.isascii() and text.isdigit():
                    row[column] = int(text)
                else:
                    raise InputError(f"{path}:{number}", f"{column} is {text!r}, not a number")
            else:
                row[column] = values[index]
        return row


@register_source("iis")
def _open(argument: str, settings: object, computer: str) -> Source:
    return IisLogSource(Path(argument), computer)
