"""`iis:<path>`: IIS W3C extended log files (u_exYYMMDD.log), a file or a folder searched recursively.

Mapping to W3CIISLog columns (reference/kql-and-sentinel.md §1.3-1.4): date + time (always UTC in W3C
logs) make TimeGenerated; each field maps to its column; a `-` placeholder is kept as "-" in string
columns (as W3CIISLog stores it) and is null in numeric ones; a field the log does not select is "" (or
null for numbers), with one warning per #Fields block that lacks a column the rule reads (the Azure
Monitor agent stores such rows with the column empty). A `#Fields` directive may appear again mid-file
and applies from there on. Computer is not in the log: it is the machine the logs come from
(DETECTOR_COMPUTER / --computer, default this host's name).

Only web server (W3SVC) logs are W3CIISLog: files under FTPSVC*, MSFTPSVC*, SMTPSVC* or NNTPSVC*
folders, and #Fields blocks with FTP's x-session / x-fullpath fields, are skipped with a notice. A file
or folder that cannot be read, or anything that is not a regular file or folder, is an error naming the
path (a run that silently read fewer files would silently find less).

Malformed entries are skipped and counted (sources.LineReport): a field count other than #Fields
declares, NUL bytes inside an entry, a date/time or number that does not parse, an entry before any
#Fields, a last line without its line break (a file still being written: it is read complete on a later
run, when the late-data re-check sees the file change). NUL padding at the start of a line (left by a
crash before the writer restarted) is dropped and the rest of the line read. Trailing spaces after the
last field are ignored. Strict reading makes every malformed line an error.

The first pass (when the rule's pushdown applies): files are read in blocks of whole lines (the next
block is read and byte-scanned on a worker thread meanwhile), cut further at directive lines, so each
run of entries has one layout. polars' CSV reader (native code, space separated, no quoting) reads only
date, time, the fields the pushdown description uses and the last field of a run; the pushdown layer
(candidates.py) finds the groups that can fire and asks for those entries only, which are parsed by
W3cLayout.entry, the code of the plain read. Results are therefore identical to the plain read's.

Exactness guards: a run of entries takes the columnar path only when every entry has exactly as many
fields as #Fields declares (the space count is exactly entries x (fields - 1) and the last field is
present in every entry), date and time are canonical (yyyy-mm-dd, hh:mm:ss) and valid for
datetime.fromisoformat, integer fields are "-" or plain digits, the fields whose values are used are
valid UTF-8, and the block holds no NUL byte. Any other run is read entry by entry with the plain code
(same rows, same skipped lines). A file with lone '\r' line breaks is left to the plain read.
"""

from __future__ import annotations

import re
import socket
import stat
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from io import FileIO
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from detector.errors import InputError
from detector.models import Row, Window
from detector.pushdown import TIME, CandidateSpec
from detector.sources import EVERY_READ, LineReport, MalformedLine, ReadRequest, Source, files_changed_after, register_source
from detector.sources.candidates import (
    BOM,
    PLAIN_INTEGER,
    RECORD,
    CandidateRead,
    KeyedBlock,
    RowsBlock,
    Unavailable,
    candidate_rows,
    columnar_applies,
    describe_binary,
    first_pass_columns,
    keys_frame,
    line_blocks,
    microseconds,
    polars_lines,
    read_range,
    read_with_pushdown,
    skip_bom,
    time_merged,
)
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.config import Settings

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


_COLUMN_TO_FIELD = {column: field for field, column in FIELD_TO_COLUMN.items()}
# Folders IIS writes non-web W3C logs into (FTP, SMTP, NNTP services); web sites log under W3SVC<n>.
_NON_WEB_FOLDER = re.compile(r"^(?:MS)?FTPSVC\d*$|^SMTPSVC\d*$|^NNTPSVC\d*$", re.IGNORECASE)
_FTP_FIELDS = frozenset({"x-session", "x-fullpath"})
BLOCK_BYTES = 16 << 20  # ~100k entries per polars call; under glibc's 32 MB mmap threshold, so buffers are reused
_TIME = r"^[0-9]{2}:[0-9]{2}:[0-5][0-9]$"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_LONE_CR = re.compile(rb"\r[^\n]")


def _field_of(column: str) -> str:
    return _COLUMN_TO_FIELD[column]


class IisLogSource(Source):
    """Rows from IIS W3C log files."""

    shares_reads = True  # the first pass answers a SharedSpec for every rule at once

    def __init__(self, path: Path, computer: str = "", strict: bool = False) -> None:
        self.path = path
        self.computer = computer or socket.gethostname()
        self.strict = strict
        self._report = LineReport(strict)

    def describe(self) -> str:
        return f"iis:{self.path} (Computer={self.computer})"

    def read_stats(self) -> dict[str, object]:
        return self._report.stats()

    def skip_causes(self) -> frozenset[tuple[str, str]] | None:
        return self._report.causes()

    def files(self, report: LineReport | None = None) -> list[Path]:
        """The web log files to read: the file itself, or every *.log below the folder, in name order."""
        report = report or LineReport(self.strict)
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            raise InputError(str(self.path), "no such file or folder; check the path after 'iis:'") from None
        except OSError as exc:
            raise InputError(str(self.path), f"cannot be read ({exc.strerror}); check the path after 'iis:'") from None
        if stat.S_ISREG(mode):
            return [self.path]
        if not stat.S_ISDIR(mode):
            raise InputError(str(self.path), "is not a regular file or folder; point iis: at IIS log files")
        found: list[Path] = []
        self._walk(self.path, found, report)
        if not found:
            raise InputError(str(self.path), "folder holds no web server (W3SVC) *.log files; point iis: at an IIS log folder")
        return sorted(found)

    def _walk(self, folder: Path, found: list[Path], report: LineReport) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise InputError(str(folder), f"folder cannot be read ({exc.strerror}); give the detector read access") from None
        for entry in entries:
            try:
                mode = entry.lstat().st_mode
                if stat.S_ISLNK(mode):
                    mode = entry.stat().st_mode
            except OSError as exc:
                raise InputError(str(entry), f"cannot be read ({exc.strerror}); give the detector read access") from None
            if stat.S_ISDIR(mode):
                if _NON_WEB_FOLDER.match(entry.name):
                    report.notice(f"{entry}: skipped, not web server logs (only W3SVC logs are W3CIISLog)", warning=False)
                    continue
                self._walk(entry, found, report)
            elif entry.suffix.lower() == ".log":
                if not stat.S_ISREG(mode):
                    raise InputError(str(entry), "is not a regular file (a FIFO or device?); remove it from the log folder")
                found.append(entry)

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        # Files carry no ingestion time: if any changed since, every bin of the window is re-checked.
        return None if files_changed_after(self.files(), ingested_after) else set()

    def read(self, request: ReadRequest) -> Iterator[Row]:
        self._report = report = LineReport(self.strict)
        files = self.files(report)
        spec = request.candidates
        columnar = columnar_applies(spec) and spec is not None and _columnar_fields(spec, request)
        if columnar and spec is not None and _checks_every_line(request, self.strict):

            def fast() -> Iterator[Row]:
                found = _read_candidates(self.path, files, self.computer, request, spec, report)
                return found.counted(report)

            def plain() -> Iterator[Row]:
                report.rows_read = 0
                return self._plain(files, request, report)

            yield from read_with_pushdown(fast, plain)
            return
        yield from self._plain(files, request, report)

    def _plain(self, files: list[Path], request: ReadRequest, report: LineReport) -> Iterator[Row]:
        spec = request.candidates
        for path in files:
            for row in self._read_file(path, request, report):
                report.rows_read += 1
                if spec is None or spec.admits(row):
                    yield row

    def _read_file(self, path: Path, request: ReadRequest, report: LineReport) -> Iterator[Row]:
        layout = W3cLayout.initial(path, request, self.computer, report)
        times: dict[str, datetime] = {}  # W3C times have second precision: parse each distinct one once
        _check_text(path)
        try:
            handle = path.open("r", encoding="utf-8-sig", errors="replace", newline=None)
        except OSError as exc:
            raise InputError(str(path), f"cannot be read ({exc.strerror}); give the detector read access") from None
        with handle:
            for number, raw_line in enumerate(handle, start=1):
                if not raw_line.endswith("\n"):
                    problem = _unfinished(raw_line)
                    if problem:
                        report.skip(MalformedLine(str(path), number, problem, causes=EVERY_READ))
                    continue
                row = layout.line(raw_line.rstrip("\r\n"), number, times)
                if isinstance(row, W3cLayout):
                    layout = row
                elif row is not None:
                    yield row


def _unfinished(text: str) -> str:
    """Why a last line without its line break is skipped ("" for nothing at all)."""
    if not text.strip(" \r"):
        return ""
    if not text.strip("\x00 \r"):
        return "NUL bytes (padding at the end of the file)"
    return "truncated last line (no line break yet)"


def _check_text(path: Path) -> None:
    """An error when the file is plainly not a UTF-8 text log (UTF-16, gzip...), naming what it looks like."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror}); give the detector read access") from None
    looks = describe_binary(head)
    if looks:
        raise InputError(str(path), f"is not a UTF-8 IIS log: it looks like {looks}")


@dataclass(frozen=True)
class W3cLayout:
    """What the directives read so far say about the entries that follow (#Fields, #Date)."""

    path: Path
    request: ReadRequest
    computer: str
    report: LineReport
    wanted: tuple[str, ...]  # the columns to fill from fields (all requested but TimeGenerated, Computer)
    numeric: frozenset[str]
    fields: tuple[str, ...] | None = None
    plan: tuple[tuple[str, int | None], ...] = ()  # (column, index in the entry or None when not logged)
    date_index: int | None = None
    time_index: int | None = None
    directive_date: str = ""
    unusable: str = ""  # why entries under the current #Fields cannot be W3CIISLog rows (FTP, no time)
    fields_text: str | None = None  # the #Fields value this layout was made from
    # #Fields values worked out so far (shared by the layouts of one file)
    fields_cache: dict[str, tuple[dict[str, object], tuple[tuple[str, bool, bool], ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def initial(cls, path: Path, request: ReadRequest, computer: str, report: LineReport) -> W3cLayout:
        """The layout before the file's first directive."""
        wanted = tuple(c for c in request.read_columns() if c not in (TIME, "Computer"))
        numeric = frozenset(c for c in wanted if COLUMN_TYPES.get(c) in ("int", "long"))
        return cls(path, request, computer, report, wanted, numeric)

    def line(self, line: str, number: int, times: dict[str, datetime]) -> W3cLayout | Row | None:
        """One line without its line break: a new layout (a directive), a row, or None (skipped, blank, outside)."""
        if line.startswith("\x00"):
            stripped = line.lstrip("\x00")
            if not stripped.strip():
                self.report.skip(MalformedLine(str(self.path), number, "NUL bytes", causes=EVERY_READ))
                return None
            self.report.notice(f"{self.path}:{number}: NUL padding before the line (a crash of the writer?) dropped")
            line = stripped
        if not line:
            return None
        if line.startswith("#"):
            return self.directive(line, number)
        try:
            return self.entry(line, number, times)
        except MalformedLine as exc:
            self.report.skip(exc)
            return None

    def directive(self, line: str, number: int) -> W3cLayout:
        """The layout after one directive line (`#Name: value`)."""
        name, _, value = line[1:].partition(":")
        name = name.strip().lower()
        if name == "fields":
            # Low-traffic servers repeat the same #Fields every few entries: work it out once per read.
            known = self.fields_cache.get(value)
            if known is None:
                known = self.fields_cache[value] = self._fields(value)
            changes, notices = known
            where = f"{self.path}:{number}"
            for text, per_block, warning in notices:
                self.report.notice(f"{where if per_block else self.path}: {text}", warning=warning)
            if value == self.fields_text:
                return self  # the same #Fields again: the same layout
            return self._with({**changes, "fields_text": value})
        if name == "date":
            day = value.strip().split(" ")[0]
            return self if day == self.directive_date else self._with({"directive_date": day})
        return self

    def _with(self, changes: dict[str, object]) -> W3cLayout:
        """dataclasses.replace without its per-field work (a directive block every few entries makes it hot)."""
        layout = object.__new__(W3cLayout)
        layout.__dict__.update(self.__dict__)
        layout.__dict__.update(changes)
        return layout

    def _fields(self, value: str) -> tuple[dict[str, object], tuple[tuple[str, bool, bool], ...]]:
        """What a `#Fields: value` directive changes, and its notices: (text, said per block, as a WARNING)."""
        fields = value.split()
        lowered = [f.lower() for f in fields]
        if _FTP_FIELDS & set(lowered):
            notice = ("FTP log entries skipped (only web server logs are W3CIISLog)", True, False)
            return {"fields": tuple(fields), "unusable": "an FTP log entry"}, (notice,)
        if "time" not in lowered:
            notice = ("#Fields has no 'time' field; its entries are skipped (TimeGenerated cannot be known)", True, True)
            return {"fields": tuple(fields), "unusable": "#Fields has no 'time' field"}, (notice,)
        index_of = {FIELD_TO_COLUMN[f]: i for i, f in enumerate(lowered) if f in FIELD_TO_COLUMN}
        # Columns Azure Monitor adds (_ResourceId, FileUri) are never logged fields: "" without a notice.
        missing = [c for c in self.wanted if c not in index_of and c in _COLUMN_TO_FIELD]
        # A column the rule groups, filters or must have: a WARNING for each block. A detail column
        # (IIS does not log s-sitename by default, and logs write a header block every few entries):
        # said once per file, at INFO.
        spec = self.request.candidates
        keys = set(self.request.required) | set((*spec.columns(), *spec.group_keys()) if spec is not None else ())
        notices = []
        for important in (True, False):
            columns = [c for c in missing if (c in keys) == important]
            if not columns:
                continue
            names = ", ".join(_field_of(c) for c in columns if c in _COLUMN_TO_FIELD)
            text = (
                f"#Fields lacks {names}; its entries are read with {', '.join(columns)} empty "
                "(enable the field(s) in IIS logging)"
            )
            notices.append((text, important, important))
        changes: dict[str, object] = {
            "fields": tuple(fields),
            "plan": tuple((c, index_of.get(c)) for c in self.wanted),
            "time_index": lowered.index("time"),
            "date_index": lowered.index("date") if "date" in lowered else None,
            "unusable": "",
        }
        return changes, tuple(notices)

    def entry(self, line: str, number: int, times: dict[str, datetime]) -> Row | None:
        """One log entry as a typed row, or None when it falls outside the window (or is not a web entry)."""
        path, fields = str(self.path), self.fields
        if fields is None:
            raise MalformedLine(path, number, "log entry before any #Fields directive", causes=EVERY_READ)
        if self.unusable:
            return None
        if "\x00" in line:
            raise MalformedLine(path, number, "NUL bytes", causes=EVERY_READ)
        values = line.split(" ")
        if len(values) != len(fields):
            while len(values) > len(fields) and values[-1] == "":
                values.pop()  # trailing spaces after the last field
            if len(values) != len(fields):
                raise MalformedLine(path, number, f"{len(values)} fields but #Fields declares {len(fields)}", causes=EVERY_READ)
        day = values[self.date_index] if self.date_index is not None else self.directive_date
        stamp = f"{day} {values[self.time_index]}"  # type: ignore[index]
        moment = times.get(stamp)
        if moment is None:
            try:
                moment = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            except ValueError:
                raise MalformedLine(
                    path, number, f"date/time {_short(stamp)} is not yyyy-mm-dd hh:mm:ss", causes=EVERY_READ
                ) from None
            if len(times) > 100_000:
                times.clear()
            times[stamp] = moment
        if not self.request.window.start <= moment < self.request.window.end:
            return None
        row: Row = {TIME: moment, "Computer": self.computer}
        numeric = self.numeric
        for column, index in self.plan:
            if index is None:
                row[column] = None if column in numeric else ""
            elif column in numeric:
                text = values[index]
                if text == "-":
                    row[column] = None
                elif text.isascii() and text.isdigit() and len(text) <= 18:
                    row[column] = int(text)
                else:
                    raise MalformedLine(
                        path, number, f"{column} is {_short(text)}, not a number", causes=frozenset({("value", column)})
                    )
            else:
                row[column] = values[index]
        return row


def _short(text: str, limit: int = 40) -> str:
    """A value for a message: repr, cut to `limit` characters (never a 4 KB dump)."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# -- the columnar first pass -----------------------------------------------------------------------------


def _columnar_fields(spec: CandidateSpec, request: ReadRequest) -> bool:
    """Every column the first pass reads but Computer is a logged field, of a type the first pass reads."""
    return all(c in (TIME, "Computer") or c in _COLUMN_TO_FIELD for c in first_pass_columns(spec, request))


def _checks_every_line(request: ReadRequest, strict: bool) -> bool:
    """Whether the first pass finds every malformed line strict reading must stop at: it checks field
    counts, NUL bytes and times of every entry, and the integer fields it reads; an integer detail field
    it does not read is checked only in the candidates' entries."""
    if not strict or request.candidates is None:
        return True
    read = set(first_pass_columns(request.candidates, request))
    return all(c in read for c in request.read_columns() if COLUMN_TYPES.get(c) in ("int", "long"))


def _read_candidates(
    where: Path, files: list[Path], computer: str, request: ReadRequest, spec: CandidateSpec, report: LineReport
) -> CandidateRead:
    """Rows of candidate groups from `files` (the logs found at `where`, the path the source was given);
    raises Unavailable (or a polars error) before returning any row."""
    return candidate_rows(lambda: _all_blocks(files, computer, request, spec, report), spec, str(where))


def _all_blocks(
    files: list[Path], computer: str, request: ReadRequest, spec: CandidateSpec, report: LineReport
) -> Iterator[KeyedBlock]:
    for group in _same_period(files):
        size = merged_block_bytes(len(group))
        if len(group) == 1:
            yield from _file_blocks(group[0], computer, request, spec, report, size)
        else:
            yield from time_merged([_file_blocks(path, computer, request, spec, report, size) for path in group])


MERGED_FILES = 16  # most files of one period read side by side (each has a reader thread and a block in flight)
# Bytes of block all the files read side by side share. Each file has about three blocks in memory at once
# (its read buffer, the block read ahead, the block waiting in the merge): a held-out folder of twelve sites
# peaked at 850 MB in 16 MB blocks, at 445 MB with this share (2.7 MB blocks), the benchmark's four sites at
# ~285 MB against ~390 MB (8 MB blocks), in the same time within the noise (docs/performance.md, tenth round).
MERGED_BYTES = 32 << 20


def merged_block_bytes(files: int) -> int:
    """The block size of each of `files` (>= 1) files read side by side: a share of MERGED_BYTES, at most
    BLOCK_BYTES (one file alone) and never under 1 MB (~6,000 entries: still one polars call for thousands)."""
    return min(BLOCK_BYTES, max(1 << 20, MERGED_BYTES // files))


def _same_period(files: list[Path]) -> list[list[Path]]:
    """The files in groups read side by side, merged by time: IIS names a log after its period
    (u_exYYMMDD.log), so files of the same name in several site folders cover the same hours, and one
    after the other each would start back at midnight. Groups come in name order (time order)."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.name.lower(), []).append(path)
    return [group[i : i + MERGED_FILES] for _, group in sorted(groups.items()) for i in range(0, len(group), MERGED_FILES)]


def _file_blocks(
    path: Path, computer: str, request: ReadRequest, spec: CandidateSpec, report: LineReport, block_bytes: int
) -> Iterator[KeyedBlock]:
    _check_text(path)
    try:
        handle = path.open("rb", buffering=0)
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror}); give the detector read access") from None
    at = _Position(W3cLayout.initial(path, request, computer, report), 1)
    with handle, closing(_scanned_blocks(handle, block_bytes)) as blocks:
        for block in blocks:
            if block.lone_cr:
                raise Unavailable
            yield from _block_runs(block, path, at, spec, request)


@dataclass
class _Position:
    """Where the first pass is in a file: the layout in force and the next line's number."""

    layout: W3cLayout
    line: int


@dataclass(frozen=True)
class _Segment:
    """A run of entries between directive lines: data[start:end] (ending with a line break), its first
    line, its space count, and its line count (-1: not counted, the block's last run)."""

    start: int
    end: int
    first_line: int
    spaces: int
    lines: int


def _block_runs(
    block: _ScannedBlock, path: Path, at: _Position, spec: CandidateSpec, request: ReadRequest
) -> Iterator[KeyedBlock]:
    """The KeyedBlocks of one scanned block: the runs of entries between directives, grouped by how they
    read (the layout in force), each group read as one frame (low-traffic servers write a header block
    every few entries, and may switch between layouts: polars' fixed cost per call would cost more than
    the entries), the groups too small for a frame typed by the plain code together; row by row where
    they must be. What one flush gives is one block for the finder (_Parts). `at` moves to the end."""
    data, report = block.data, at.layout.report
    groups: list[tuple[W3cLayout, list[_Segment]]] = []  # runs that read alike, by their first's layout

    def flush() -> Iterator[KeyedBlock]:
        parts: list[KeyedBlock] = []
        plain: list[tuple[_Segment, W3cLayout]] = []  # runs for the plain code: a group too small for a frame, or one not exact
        for layout, segments in groups:
            big = sum(segment.end - segment.start for segment in segments) >= SMALL_RUN_BYTES
            run = _merged_frame(data, segments, layout, at, path, block.offset, spec, request) if big else None
            if run is None:
                plain.extend((segment, layout) for segment in segments)
            else:
                parts.append(run)
        groups.clear()
        # Typed in file order: typing reports skipped lines (and, reading strictly, stops at the first),
        # which the plain read reports in that order. A frame reports nothing.
        plain.sort(key=lambda item: item[0].start)
        if plain and plain[-1][0].lines < 0:  # the block's last run, whose lines were left to its frame to count
            last, layout = plain[-1]
            plain[-1] = (replace(last, lines=data.count(b"\n", last.start, last.end)), layout)
            at.line = last.first_line + plain[-1][0].lines
        parts.extend(_small_runs(data, plain, at, path, block.offset, spec, request))
        if len(parts) > 1:
            yield _Parts(parts)
        else:
            yield from parts

    for start, end, spaces in block.parts:
        if spaces < 0:
            text = data[start:end].decode("utf-8", errors="replace")
            if not text.endswith("\n"):
                report.skip(MalformedLine(str(path), at.line, _unfinished(text) or "truncated last line", causes=EVERY_READ))
                continue
            changed = at.layout.line(text.rstrip("\r\n"), at.line, {})
            if isinstance(changed, W3cLayout):
                at.layout = changed
            at.line += 1
            continue
        if block.nul or not data.endswith(b"\n", start, end):
            # NUL bytes, a last line without its line break: the plain code decides.
            yield from flush()
            yield from _plain_block(data, _Segment(start, end, at.line, spaces, -1), at, path, block.offset, spec, request)
            continue
        # Lines are counted only where a directive follows (or the run is small); the block's last run is
        # the frame's height.
        lines = data.count(b"\n", start, end) if end < len(data) or end - start < SMALL_RUN_BYTES else -1
        segment = _Segment(start, end, at.line, spaces, lines)
        for layout, segments in groups:
            if _reads_alike(layout, at.layout):
                segments.append(segment)
                break
        else:
            groups.append((at.layout, [segment]))
        if lines >= 0:
            at.line += lines
    yield from flush()


class _Parts(KeyedBlock):
    """Several blocks of one scanned block as one for the finder (whose cost per block is then paid once):
    their key frames one after the other, records numbered on across them."""

    def __init__(self, parts: list[KeyedBlock]) -> None:
        import polars as pl

        self.parts, self.firsts = parts, []
        frames, at = [], 0
        for part in parts:
            self.firsts.append(at)
            frames.append(part.keys.with_columns((pl.col(RECORD) + at).cast(pl.UInt32)))
            at += part.keys.height
            part.drop_keys()
        self.keys = pl.concat(frames, how="vertical_relaxed")

    def detach(self) -> None:
        for part in self.parts:
            part.detach()

    def _mine(self, records: list[int]) -> list[list[int]]:
        """The records (sorted) of each part, in the part's numbers."""
        cuts = [bisect_left(records, first) for first in self.firsts] + [len(records)]
        return [[r - low for r in records[a:b]] for low, a, b in zip(self.firsts, cuts, cuts[1:], strict=False)]

    def hold(self, records: list[int]) -> list[int]:
        """Each part holds its own records (a run typed row by row keeps only their rows), numbered on."""
        kept: list[KeyedBlock] = []
        firsts: list[int] = []
        numbers: list[int] = []
        for part, mine in zip(self.parts, self._mine(records), strict=True):
            if mine:
                held = part.hold(mine)
                at = numbers[-1] + 1 if numbers else 0
                kept.append(part)
                firsts.append(at)
                numbers += [at + n for n in held]
        self.parts, self.firsts = kept, firsts
        return numbers

    def rows(self, records: list[int]) -> Iterator[Row]:
        for part, mine in zip(self.parts, self._mine(records), strict=True):
            if mine:
                yield from part.rows(mine)


SMALL_RUN_BYTES = 16 << 10  # ~100 entries: fewer cost less typed by the plain code than one polars frame


def _small_runs(
    data: bytes,
    runs: list[tuple[_Segment, W3cLayout]],
    at: _Position,
    path: Path,
    offset: int,
    spec: CandidateSpec,
    request: ReadRequest,
) -> Iterator[KeyedBlock]:
    """Small runs (each with its layout: a server that writes a header block every few entries may switch
    between layouts) typed by the plain code, as one RowsBlock: the finder's cost per block is paid once
    for all of them, not once per run. Their lines were counted, so `at` is already past them."""
    if not runs:
        return
    places = [((path, offset + run.start, run.end - run.start), run.first_line, layout) for run, layout in runs]

    def typed_runs(read: Callable[[tuple[Path, int, int]], bytes]) -> list[Row]:
        rows: list[Row] = []
        for where, first_line, layout in places:
            rows += _plain_run(read(where), first_line, layout)[0]
        return rows

    rows = typed_runs(lambda where: data[where[1] - offset : where[1] - offset + where[2]])
    yield RowsBlock(rows, spec, request.window, lambda: typed_runs(lambda where: read_range(*where)))


def _reads_alike(a: W3cLayout, b: W3cLayout) -> bool:
    """Whether entries under layout b are read exactly as under layout a (only the directives' #Date,
    #Software... differ, and #Date matters only to a log without a date field)."""
    return (
        a.fields == b.fields
        and a.plan == b.plan
        and a.time_index == b.time_index
        and a.date_index == b.date_index
        and a.unusable == b.unusable
        and (a.date_index is not None or a.directive_date == b.directive_date)
    )


def _merged_frame(
    data: bytes,
    segments: list[_Segment],
    layout: W3cLayout,
    at: _Position,
    path: Path,
    offset: int,
    spec: CandidateSpec,
    request: ReadRequest,
) -> _ColumnarRun | None:
    """One columnar frame for runs that read alike, or None when the frame cannot be exact (the runs are
    then the plain code's). A last run whose lines were not counted moves `at` past it."""
    if len(segments) == 1:
        first = segments[0]
        entries = data if first.start == 0 and first.end == len(data) else data[first.start : first.end]
    else:
        entries = b"".join(data[segment.start : segment.end] for segment in segments)
    keys = _columnar_keys(entries, sum(segment.spaces for segment in segments), layout, spec, request)
    if keys is None:
        return None
    run = _ColumnarRun(keys, entries, layout, path, offset, segments)
    if segments[-1].lines < 0:
        at.line = segments[-1].first_line + keys.height - run.first_records[-1]  # one record per line
    return run


def _plain_block(
    data: bytes, segment: _Segment, at: _Position, path: Path, offset: int, spec: CandidateSpec, request: ReadRequest
) -> Iterator[KeyedBlock]:
    """One run of entries typed by the plain code; `at` moves past it (its layout may change: a directive
    behind NUL padding is one to the plain code)."""
    where = (path, offset + segment.start, segment.end - segment.start)
    before, first = at.layout, segment.first_line
    rows, at.layout = _plain_run(data[segment.start : segment.end], first, before)

    def again() -> list[Row]:
        return _plain_run(read_range(*where), first, before)[0]

    at.line = first + (segment.lines if segment.lines >= 0 else data.count(b"\n", segment.start, segment.end))
    yield RowsBlock(rows, spec, request.window, again)


def _plain_run(data: bytes, first_line: int, layout: W3cLayout) -> tuple[list[Row], W3cLayout]:
    """A run of entries as the plain read types them (skipping what it skips), and the layout after it
    (a directive behind NUL padding, which the byte scan cannot see as one, may change it)."""
    times: dict[str, datetime] = {}
    rows: list[Row] = []
    lines = data.split(b"\n")
    for index, raw_line in enumerate(lines):
        if index == len(lines) - 1:
            problem = _unfinished(raw_line.decode("utf-8", errors="replace"))
            if problem:
                layout.report.skip(MalformedLine(str(layout.path), first_line + index, problem, causes=EVERY_READ))
            break
        text = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
        row = layout.line(text, first_line + index, times)
        if isinstance(row, W3cLayout):
            layout = row
        elif row is not None:
            rows.append(row)  # the filter is the key frame's: rows it rejects are read, and counted
    return rows, layout


@dataclass(frozen=True)
class _ScannedBlock:
    """A block of whole lines and what the byte scans found in it."""

    data: bytes
    offset: int  # of data in the file
    lone_cr: bool  # a CR not followed by LF: a line break to the plain path's universal newlines, not to polars
    nul: bool  # a NUL byte somewhere: its runs are read entry by entry
    parts: list[tuple[int, int, int]]  # (start, end, spaces) of each run of entries; spaces -1: a directive line


def _scan(offset: int, data: bytes) -> _ScannedBlock:
    """Find directive lines, count each run's spaces (for the field-count check), look for lone CRs and NULs."""
    if b"\r" in data and (_LONE_CR.search(data) or data.endswith(b"\r")):  # memchr first: LF files pay nothing
        return _ScannedBlock(data, offset, True, False, [])
    nul = b"\x00" in data
    parts = []
    position = 0
    while position < len(data):
        if data.startswith(b"#", position):
            cut = data.find(b"\n", position) + 1 or len(data)
            parts.append((position, cut, -1))
        else:
            cut = _next_directive(data, position)
            parts.append((position, cut, data.count(b" ", position, cut)))
        position = cut
    return _ScannedBlock(data, offset, False, nul, parts)


def _scanned_blocks(handle: FileIO, block_bytes: int) -> Generator[_ScannedBlock, None, None]:
    """The file's blocks, scanned; the next block is read and scanned on a worker thread meanwhile.

    The reads and byte scans (~40 % of a block's time) run while the caller is in polars, which
    releases the GIL, so on two cores they mostly cost no wall time. Order and results are those of
    reading and scanning block after block: one worker, one block ahead.
    """
    from concurrent.futures import ThreadPoolExecutor  # polars imports it anyway

    start = skip_bom(handle)
    blocks = line_blocks(handle, start, block_bytes)

    def next_block() -> _ScannedBlock | None:
        item = next(blocks, None)
        return None if item is None else _scan(*item)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iis-scan") as worker:
        pending = worker.submit(next_block)
        while (block := pending.result()) is not None:
            pending = worker.submit(next_block)
            yield block


def _next_directive(data: bytes, position: int) -> int:
    """Where the next directive line starts (a line beginning with '#'), or len(data)."""
    hit = data.find(b"#", position)  # memchr: '#' is rare inside IIS entries, so this loop is short
    while hit > 0:
        if data[hit - 1] == 0x0A:  # b"\n"
            return hit
        hit = data.find(b"#", hit + 1)
    return len(data)


class _ColumnarRun(KeyedBlock):
    """Runs of entries the columnar pass read as one frame (record = entry, in order); the segments say
    where their bytes are in the block at `offset` of the file and which line each run starts at."""

    def __init__(
        self, keys: pl.DataFrame, data: bytes, layout: W3cLayout, path: Path, offset: int, segments: list[_Segment]
    ) -> None:
        self.keys, self.layout, self.path, self.offset = keys, layout, path, offset
        self.height = keys.height
        self._data: bytes | None = data
        self._segments = segments
        self.first_records = [0]  # of each segment (every segment but the last has its lines counted)
        for segment in segments[:-1]:
            self.first_records.append(self.first_records[-1] + segment.lines)

    def detach(self) -> None:
        self._data = None

    def _bytes(self) -> bytes:
        if self._data is not None:
            return self._data
        first, last = self._segments[0], self._segments[-1]
        span = read_range(self.path, self.offset + first.start, last.end - first.start)
        if len(self._segments) == 1:
            return span
        return b"".join(span[s.start - first.start : s.end - first.start] for s in self._segments)

    def _line_of(self, record: int) -> int:
        index = bisect_right(self.first_records, record) - 1
        return self._segments[index].first_line + record - self.first_records[index]

    def rows(self, records: list[int]) -> Iterator[Row]:
        data = self._bytes()
        times: dict[str, datetime] = {}
        for index, text in zip(records, _lines(data, records, self.height), strict=True):
            if not text or text.startswith("#"):
                raise Unavailable  # the first pass read an entry on this line: the log changed since
            row = self.layout.line(text, self._line_of(index), times)
            if row is not None and not isinstance(row, W3cLayout):
                yield row


def _lines(data: bytes, records: list[int], height: int) -> list[str]:
    """The text of these lines (sorted indices) as the plain path reads them (decoded, line break removed).

    polars, told that a line is one field (separator NUL), cuts the lines in native code, several times
    faster than bytes.split; it refuses a NUL byte (more fields) and invalid UTF-8, and then bytes.split
    with errors="replace" decoding does it. Either way a line loses its CRLF or LF only: the caller
    checked there is no lone CR.
    """
    lines = polars_lines(data, records[-1] + 1)
    if lines is not None and lines.len() == min(height, records[-1] + 1):
        return lines.gather(records).to_list()
    split = data.split(b"\n", records[-1] + 1)
    if len(split) <= records[-1]:
        raise Unavailable  # fewer lines than the first pass counted: the log changed since it was read
    return [split[index].decode("utf-8", errors="replace").rstrip("\r\n") for index in records]


def _columnar_keys(data: bytes, spaces: int, layout: W3cLayout, spec: CandidateSpec, request: ReadRequest) -> pl.DataFrame | None:
    """The KeyedBlock.keys of a run of entries (record = line), or None when it must be read entry by entry.

    polars reads only date, time, the fields the description uses and the last field of #Fields. Field
    counts: a line with fewer fields than declared, or a blank line, leaves the last field null (-> None),
    so every line has at least len(fields) - 1 spaces; the run's space count being exactly lines x
    (fields - 1) then means every line has exactly len(fields) fields, as W3cLayout.entry requires, and
    there is one record per line. (polars stops reading a line at the last projected field, so it cannot
    see extra fields itself; reading all of them would cost twice the count.)
    """
    import polars as pl

    fields = layout.fields
    if fields is None or layout.time_index is None or layout.unusable:
        return None  # entries before #Fields, FTP entries: the plain code decides
    index_of = dict(layout.plan)
    names = [f"column_{i + 1}" for i in range(len(fields))]
    used = {layout.time_index}  # the fields whose values are used (the last one is read only for its count)
    if layout.date_index is not None:
        used.add(layout.date_index)
    read = first_pass_columns(spec, request)
    wanted = [c for c in read if c not in (TIME, "Computer")]
    for column in wanted:
        index = index_of.get(column)
        if index is not None:
            used.add(index)
    frame = _read_fields(data, names, sorted(used | {len(fields) - 1}), sorted(used))
    if frame is None or frame[names[-1]].null_count() or spaces != frame.height * (len(fields) - 1):
        return None
    moments = _moments(frame, layout, names)
    if moments is None:
        return None
    frame = frame.with_columns(moments.alias("_t"))
    typed: list[pl.Expr] = [pl.col("_t")]
    if "Computer" in read:
        typed.append(pl.lit(layout.computer).alias("Computer"))
    for column in wanted:
        index = index_of.get(column)
        numeric = COLUMN_TYPES[column] in ("int", "long")
        if index is None:  # not logged: as the plain code fills it
            typed.append(pl.lit(None, dtype=pl.Int64).alias(column) if numeric else pl.lit("").alias(column))
            continue
        text = frame[names[index]]
        if text.null_count():
            return None  # an empty field (two spaces): the plain code decides
        if numeric:
            seen = text.unique()  # a few hundred values: check each once
            if not (seen.eq("-") | seen.str.contains(PLAIN_INTEGER)).all():
                return None
            typed.append(pl.col(names[index]).cast(pl.Int64, strict=False).alias(column))  # "-" -> null
        else:
            typed.append(pl.col(names[index]).alias(column))
    return keys_frame(frame.select(typed), spec, request.window)


def _read_fields(data: bytes, names: list[str], read: list[int], used: list[int]) -> pl.DataFrame | None:
    """These fields of space-separated entries as strings, or None when polars cannot read them exactly.

    Invalid UTF-8 anywhere in the run makes the strict reader fail; the run is then read again with
    invalid bytes replaced by U+FFFD. A field without invalid bytes reads the same either way (the plain
    path's errors="replace" decoding never merges a space into an invalid sequence); dates, times and
    ports are checked by pattern later, and a used field holding U+FFFD makes the run fall back to the
    plain code.
    """
    import polars as pl

    if data.startswith(BOM):
        return None  # polars drops a leading BOM; the plain code reads it into the first field (a run after a directive)

    def parse(encoding: Literal["utf8", "utf8-lossy"]) -> pl.DataFrame:
        schema = dict.fromkeys(names, pl.String)
        columns = [names[i] for i in read]
        return pl.read_csv(
            data, separator=" ", has_header=False, quote_char=None, schema=schema, columns=columns, encoding=encoding
        )

    try:
        return parse("utf8")
    except pl.exceptions.PolarsError:
        pass
    try:
        frame = parse("utf8-lossy")
    except pl.exceptions.PolarsError:
        return None
    checked = [pl.col(names[i]).str.contains("\ufffd", literal=True) for i in used]
    return None if frame.select(pl.any_horizontal(checked).any()).item() else frame


def _moments(frame: pl.DataFrame, layout: W3cLayout, names: list[str]) -> pl.Series | None:
    """Epoch microseconds of each entry's date + time, exactly as W3cLayout.entry types them, or None.

    W3C logs are written in time order, so equal values come in runs: each run's value is checked and
    typed once (a run of 52k entries holds ~15k time runs and one or two date runs), then spread back
    to the entries by run index, with no hashing or joins.
    """
    import polars as pl

    time = frame[names[layout.time_index]]  # type: ignore[index]
    if time.null_count():
        return None
    time_runs = time.rle_id()
    time_values = time.filter(time_runs.ne_missing(time_runs.shift(1)))  # each run's value, in order
    if not time_values.str.contains(_TIME).all():
        return None
    hour, minute, second = (time_values.str.slice(start, 2).cast(pl.Int64) for start in (0, 3, 6))
    if hour.max() > 23 or minute.max() > 59:  # type: ignore[operator]
        return None  # datetime.fromisoformat refuses them (seconds are [0-5][0-9] by _TIME)
    moments = ((hour * 3600 + minute * 60 + second) * 1_000_000).gather(time_runs)
    if layout.date_index is None:
        day_us = _day_microseconds(layout.directive_date)
        return None if day_us is None else moments + day_us
    date = frame[names[layout.date_index]]
    if date.null_count():
        return None
    first = date[0]
    if date.eq(first).all():  # the usual case: one day per block
        day_us = _day_microseconds(first)
        return None if day_us is None else moments + day_us
    date_runs = date.rle_id()
    days = [_day_microseconds(day) for day in date.filter(date_runs.ne_missing(date_runs.shift(1))).to_list()]
    if None in days:
        return None
    return moments + pl.Series(days, dtype=pl.Int64).gather(date_runs)


def _day_microseconds(day: str) -> int | None:
    """Epoch microseconds of a canonical yyyy-mm-dd that datetime.fromisoformat accepts, else None."""
    if not _DATE.fullmatch(day):
        return None
    try:
        return microseconds(datetime.fromisoformat(day).replace(tzinfo=UTC))
    except ValueError:
        return None


@register_source("iis")
def _open(argument: str, settings: Settings) -> Source:
    return IisLogSource(Path(argument), settings.computer, strict=settings.strict)
