"""`file:<path>`: W3CIISLog rows as JSON Lines, a JSON array, or a saved Log Analytics query response.

The format is recognised by content. JSON Lines is streamed line by line, and a saved response and a
JSON array (what `az monitor log-analytics query` prints) value by value: memory does not grow with the
file. The rule's pushdown
description is applied: rows its filter rejects are never returned, and when it prunes groups the file
is read through the pushdown layer (candidates.py), and only rows of groups that can fire are typed and
returned. The rule's results are the same. JSON Lines: polars parses only the columns the description
reads, block by block. A saved response and a JSON array: their stream reader and first pass are in
response.py.

Malformed lines (not JSON, not an object, a column of the wrong type, a missing required column, a
truncated last line) are skipped and counted (sources.LineReport); strict reading makes them errors.

Columnar exactness guards. A block takes the columnar path only when polars parses it into one row per
line and its values are certainly the ones json.loads + coerce_row give (polars refuses deep nesting and
a lone low surrogate escape itself, and such a block is read the plain way):
- no surrogate escape outside a high-low pair (polars reads a lone high one as U+0000, the plain code
  makes it U+FFFD);
- every column read occurs as a key exactly once per line where polars saw a value (json.loads keeps the
  last of repeated keys, polars the first), counted on the bytes; a block with a key written with a
  \\u escape is read the plain way;
- string columns hold JSON strings (or null, when the column is not required): str() of a JSON number
  or an object differs from polars' rendering;
- integer columns: plain digits are typed in polars, other text tolong reads (`-1`, ` 8080`: a JSON
  number polars renders as its digits is the same integer to coerce_value) once per distinct value;
- TimeGenerated: the common ISO forms (`Z`, `+hh:mm`, a space for the `T`, no offset, no seconds) are
  typed in polars, any other JSON string by the plain code's parse_datetime once per distinct value
  (candidates.typed_times; a number polars renders as text is refused), and a value it refuses leaves
  the line to the plain code;
- required columns are present in every line (polars reads a missing key and a null alike).
Any other block is read row by row with the plain code (same rows, same skipped lines).

Lines are cut at LF only, as JSON Lines defines them (CRLF is fine); a block with a CR that is not part
of a CRLF is read the plain way. Values are made representable where they are read: a lone surrogate
(from a `\\ud800` escape; no sink can encode it) becomes U+FFFD (a parity note: KQL keeps the escape).
Non-UTF-8 input is one error naming the byte offset and what the file looks like (UTF-16, gzip, zip).

Nesting: json's scanner counts a value's depth against the recursion limit from the caller's stack, so
every json parse of a row goes through sources.nesting_safe (the same answer from any stack: up to ~990
levels). polars reads up to 1,023 levels, so a line nested between the two in a group that cannot fire
is counted as read, not skipped (findings are the same: a candidate's line is skipped when taken).

Known difference: columns the description does not read are typed only in rows the rule gets; a
malformed value there (an object where a user agent belongs) in a row of a group that cannot fire is not
counted as a skipped line (the plain read counts it; the findings are the same). Strict reading, which
must see every column of every line, always takes the plain read.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from detector.errors import InputError
from detector.kql import tolong
from detector.models import Row, Window
from detector.pushdown import TIME, CandidateSpec
from detector.sources import (
    EVERY_READ,
    LineReport,
    MalformedLine,
    ReadRequest,
    Source,
    files_changed_after,
    json_object,
    nesting_safe,
    register_source,
    typed,
)
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
    line_spans,
    open_input,
    parse_times,
    polars_lines,
    read_pieces,
    read_range,
    read_span,
    read_with_pushdown,
    rows_frame,
    skip_bom,
    typed_times,
    vectorised_times,
)
from detector.sources.keys_json import decoded_keys
from detector.sources.response import JsonStream, NotStreamable, not_utf8, read_array_candidates, read_response_candidates
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.config import Settings

BLOCK_BYTES = 8 << 20  # ~20k rows: big enough to amortise polars calls, small enough to keep memory flat
# Threads parsing key frames, one block each. read_ndjson and every frame select run on polars' own pool
# (a thread per core), so a third worker on 2 cores was 4-7% faster, but it holds a fourth block in
# flight: ~35 MB more peak RSS on the benchmark's day (docs/performance.md, tenth round), and a Functions
# instance may have one core and 512 MB. Memory is the scarcer of the two.
KEY_WORKERS = 2
BLOCKS_AHEAD = 2  # blocks read and being parsed ahead of the finder (memory: ~3 blocks' bytes and frames)


def typed_json_line(line: str, number: int, request: ReadRequest, where: str) -> Row | None:
    """One JSON Lines line as a typed row (None for a blank line); a bad line raises MalformedLine."""
    if not line.strip():
        return None
    if line.endswith("\n"):  # the plain read's lines keep their LF, the fast read's do not: parse both alike,
        line = line[:-1]  # so that a line cut inside a string gets the same reason in both
    try:
        raw, clean = json_object(line)
    except json.JSONDecodeError as exc:
        raise MalformedLine(where, number, f"not valid JSON ({exc.msg}, column {exc.colno})", causes=EVERY_READ) from None
    except ValueError as exc:  # an integer longer than Python converts (4,300 digits)
        raise MalformedLine(where, number, f"a value Python cannot read ({exc})", causes=EVERY_READ) from None
    except RecursionError:
        raise MalformedLine(where, number, "JSON nested too deeply", causes=EVERY_READ) from None
    if not isinstance(raw, dict):
        raise MalformedLine(
            where, number, f"a JSON {type(raw).__name__} where an object of W3CIISLog columns belongs", causes=EVERY_READ
        )
    return typed(raw, request, where, number, clean=clean)


class FileSource(Source):
    """Rows from one JSON file."""

    shares_reads = True  # the first pass answers a SharedSpec for every rule at once

    def __init__(self, path: Path, strict: bool = False) -> None:
        self.path = path
        self.strict = strict
        self._report = LineReport(strict)

    def describe(self) -> str:
        return f"file:{self.path}"

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        # Files carry no ingestion time: if any changed since, every bin of the window is re-checked.
        return None if files_changed_after([self.path], ingested_after) else set()

    def read_stats(self) -> dict[str, Any]:
        return self._report.stats()

    def skip_causes(self) -> frozenset[tuple[str, str]] | None:
        return self._report.causes()

    def read(self, request: ReadRequest) -> Iterator[Row]:
        self._report = report = LineReport(self.strict)
        spec = request.candidates
        # Strict reading must see every line's every column, which is the plain read's work.
        kind = self._columnar_kind() if columnar_applies(spec) and spec is not None and not self.strict else ""
        if kind and spec is not None:
            read_candidates = {"jsonl": _read_candidates, "response": read_response_candidates, "array": read_array_candidates}[
                kind
            ]

            def fast() -> Iterator[Row]:
                found = read_candidates(self.path, request, spec, report)
                return found.counted(report)

            def plain() -> Iterator[Row]:
                report.rows_read = 0
                return self._plain(request, report)

            yield from read_with_pushdown(fast, plain)
            return
        yield from self._plain(request, report)

    def _plain(self, request: ReadRequest, report: LineReport) -> Iterator[Row]:
        spec = request.candidates
        for row in self._rows(request, report):
            if request.window.contains(row[TIME]):
                report.rows_read += 1
                if spec is None or spec.admits(row):
                    yield row

    def _columnar_kind(self) -> str:
        """Which columnar read applies: jsonl (the first line is one JSON object that is not a Log
        Analytics response), response (a saved response, "tables" first), array (a JSON array, as the
        plain read recognises it), or "" (the plain read decides)."""
        try:
            with self._open() as handle:
                first_line = handle.readline(1 << 20).removeprefix(BOM)  # a longer first line is no JSON Lines row
                sniff = first_line + handle.read(SNIFF_BYTES)  # as the plain read sniffs: an indented body's "tables"
        except InputError:
            return ""  # the plain path reports it
        if _LA_RESPONSE_START.match(sniff[:SNIFF_BYTES]):  # the plain read's tests, on the same bytes
            return "response"
        if _is_array(sniff[:SNIFF_BYTES]):
            return "array"
        if not first_line.strip():  # leading blank lines: JSON Lines, if the first line with a row is one
            first_line = next((line for line in sniff.splitlines() if line.strip()), b"")
        try:
            head = json.loads(first_line.decode("utf-8"))  # bytes would let json guess UTF-16: the plain read does not
        except (ValueError, RecursionError):
            return ""
        return "jsonl" if isinstance(head, dict) and "tables" not in head else ""

    def _open(self) -> Any:
        where = str(self.path)
        try:
            mode = self.path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise InputError(where, "is not a regular file (a folder, FIFO or device?); point file: at a JSON file")
            return self.path.open("rb")
        except OSError as exc:
            raise InputError(where, f"cannot open ({exc.strerror}); check the path after 'file:'") from None

    def _rows(self, request: ReadRequest, report: LineReport) -> Iterator[Row]:
        where = str(self.path)
        with self._open() as handle:
            head = handle.read(4)
            looks = describe_binary(head)
            if looks:
                raise InputError(where, f"is not UTF-8 JSON: it looks like {looks}")
            start = len(BOM) if head.startswith(BOM) else 0
            handle.seek(start)
            sniff = handle.read(SNIFF_BYTES)  # never the whole first line: a saved response may be one line
            first_line, newline, _ = sniff.partition(b"\n")
            first = first_line.lstrip()[:1]
            handle.seek(start)
            if _is_array(sniff):  # blank lines before it too: json.load reads them as whitespace
                yield from self._array(handle, start, request, where, report)
                return
            if _LA_RESPONSE_START.match(sniff):
                # A saved Log Analytics response (blank lines before it too): read as a stream, never loaded whole.
                try:
                    yield from self._la_stream(handle, start, request, where, report)
                except NotStreamable:
                    handle.seek(start)
                    yield from self._la_response(self._load_document(handle, start, where), request, where, report)
                return
            if not first:
                # A leading blank line (or an empty file): whatever follows decides, read as JSON Lines.
                yield from self._jsonl(handle, start, request, where, report)
                return
            if first != b"{":
                hint = "; its NUL bytes suggest UTF-16 without a BOM: save it as UTF-8" if b"\x00" in first_line else ""
                raise InputError(f"{where}:1", "is not JSON Lines, a JSON array or a Log Analytics response" + hint)
            if newline:
                try:
                    head_object = json.loads(first_line.decode("utf-8"))
                except (ValueError, RecursionError):
                    head_object = None
                if isinstance(head_object, dict) and "tables" in head_object:
                    yield from self._la_response(head_object, request, where, report)  # "tables" not its first key
                    return
            yield from self._jsonl(handle, start, request, where, report)

    @staticmethod
    def _load_document(handle: Any, start: int, where: str) -> Any:
        data = handle.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(where, not_utf8(data, exc, start)) from None
        try:
            return nesting_safe(json.loads, text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}:{exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})") from None
        except ValueError as exc:  # an integer longer than Python converts (4,300 digits)
            raise InputError(where, f"a value Python cannot read ({exc})") from None
        except RecursionError:
            raise InputError(where, "JSON nested too deeply to be W3CIISLog rows") from None

    @staticmethod
    def _jsonl(handle: Any, start: int, request: ReadRequest, where: str, report: LineReport) -> Iterator[Row]:
        offset = start
        for number, raw_line in enumerate(handle, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{where}:{number}", not_utf8(raw_line, exc, offset)) from None
            offset += len(raw_line)
            try:
                row = typed_json_line(line, number, request, where)
            except MalformedLine as exc:
                if not line.endswith("\n"):
                    exc = MalformedLine(where, number, f"truncated last line ({exc.reason})", causes=exc.causes)
                report.skip(exc)
                continue
            if row is not None:
                yield row

    @staticmethod
    def _array(handle: Any, start: int, request: ReadRequest, where: str, report: LineReport) -> Iterator[Row]:
        """A JSON array of row objects, element by element (memory: a chunk and one element)."""
        stream = JsonStream(handle, start, where)
        stream.expect("[")
        index = 0
        if stream.peek() == "]":
            stream.pos += 1
        else:
            while True:
                raw = stream.value()
                if not isinstance(raw, dict):
                    report.skip(MalformedLine(where, f"row {index}", "must be a JSON object of W3CIISLog columns"))
                else:
                    try:
                        yield typed(raw, request, where, f"row {index}")
                    except MalformedLine as exc:
                        report.skip(exc)
                index += 1
                if stream.peek() == ",":
                    stream.pos += 1
                    continue
                stream.expect("]", after_item=True)
                break
        after = stream.peek()
        if after:
            place, at = stream.place(stream.base + stream.pos)
            if after == "\x00":
                raise InputError(place, f"NUL bytes after the array's closing ']' ({at}): the file was not written whole")
            raise InputError(place, f"not valid JSON: more after the array's closing ']' ({at}); a file holds one array")

    @staticmethod
    def _la_stream(handle: Any, start: int, request: ReadRequest, where: str, report: LineReport) -> Iterator[Row]:
        stream = JsonStream(handle, start, where)
        names: list[str] | None = None
        index = 0
        for event, payload in stream.la_tables():
            if event == "columns":
                try:
                    names = [c["name"] for c in payload]
                except (KeyError, TypeError):
                    raise InputError(where, "each table needs 'columns' (with 'name') and 'rows'") from None
                missing = [c for c in request.required if c not in names]
                if missing:
                    raise InputError(
                        where,
                        f"missing required column(s) {', '.join(missing)}; W3CIISLog rows need {', '.join(request.required)}",
                    )
                continue
            assert names is not None  # noqa: S101 - la_tables() gives the columns before any row
            label = f"row {index}"
            index += 1
            if not isinstance(payload, list) or len(payload) != len(names):
                report.skip(MalformedLine(where, label, f"must be a list of {len(names)} values"))
                continue
            try:
                yield typed(dict(zip(names, payload, strict=True)), request, where, label)
            except MalformedLine as exc:
                report.skip(exc)

    @staticmethod
    def _la_response(document: Mapping[str, Any], request: ReadRequest, where: str, report: LineReport) -> Iterator[Row]:
        if document.get("error"):
            error = document["error"]
            code = error.get("code") if isinstance(error, dict) else error
            raise InputError(where, f"the saved response carries an error ({code}); its rows may be incomplete")
        tables = document.get("tables")
        if not isinstance(tables, list) or not tables:
            raise InputError(where, "a Log Analytics response needs a non-empty 'tables' list")
        table = next((t for t in tables if isinstance(t, dict) and t.get("name") == "PrimaryResult"), tables[0])
        try:
            names = [c["name"] for c in table["columns"]]
            rows = table["rows"]
        except (KeyError, TypeError):
            raise InputError(where, "each table needs 'columns' (with 'name') and 'rows'") from None
        missing = [c for c in request.required if c not in names]
        if missing:
            raise InputError(
                where, f"missing required column(s) {', '.join(missing)}; W3CIISLog rows need {', '.join(request.required)}"
            )
        for index, values in enumerate(rows):
            label = f"row {index}"
            if not isinstance(values, list) or len(values) != len(names):
                report.skip(MalformedLine(where, label, f"must be a list of {len(names)} values"))
                continue
            try:
                yield typed(dict(zip(names, values, strict=True)), request, where, label)
            except MalformedLine as exc:
                report.skip(exc)


def _is_array(sniff: bytes) -> bool:
    """The file's first bytes (after a BOM) start a JSON array: `[` after JSON whitespace only."""
    return sniff.lstrip(b" \t\r\n")[:1] == b"["


_LA_RESPONSE_START = re.compile(rb'^\s*\{\s*"tables"\s*:')
SNIFF_BYTES = 1 << 16


# -- the columnar first pass over JSON Lines -------------------------------------------------------------


def _read_candidates(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> CandidateRead:
    """Rows of candidate groups; raises Unavailable (or a polars error) before returning any row."""
    return candidate_rows(lambda: _blocks(path, request, spec, report), spec, str(path))


def _blocks(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> Generator[KeyedBlock, None, None]:
    """The file's blocks in order; the key frames of the next blocks are parsed on worker threads meanwhile.

    A block's columnar parse is native polars work: read_ndjson and frame selects run on polars' thread
    pool (shared by the workers), eager Series steps on the worker's own thread without the GIL. So with
    BLOCKS_AHEAD blocks in flight every core parses while this thread feeds the finder. Order, results and
    errors are those of parsing block after block (a worker's exception is raised here, for its block).
    """
    from concurrent.futures import Future, ThreadPoolExecutor  # polars imports it anyway

    handle = open_input(path)
    where = str(path)
    with handle:
        pool = ThreadPoolExecutor(max_workers=KEY_WORKERS, thread_name_prefix="jsonl-keys")
        try:
            start = skip_bom(handle)
            fd = handle.fileno()
            spans = line_spans(fd, start, os.fstat(fd).st_size, BLOCK_BYTES)
            pending: deque[tuple[int, int, Future[_ColumnarBlock | _OddLines | None]]] = deque()

            def fill(wary: bool) -> None:
                while len(pending) < BLOCKS_AHEAD and (span := next(spans, None)) is not None:
                    offset, length = span
                    pending.append(
                        (offset, length, pool.submit(_columnar_block, fd, offset, length, path, spec, request, report, wary))
                    )

            line = 1
            wary = False  # a block taken so far had odd lines (decided here, so the same file always reads alike)
            fill(wary)
            while pending:
                offset, length, future = pending.popleft()
                block = future.result()
                wary = wary or not isinstance(block, _ColumnarBlock)
                fill(wary)
                if isinstance(block, _OddLines):
                    block = block.completed(path, offset, length, line, request, report)
                if block is not None:
                    block.first_line = line
                    line += block.keys.height  # a columnar block: one record per line
                    yield block
                    continue

                def again(offset: int = offset, length: int = length, first: int = line) -> list[Row]:
                    return _plain_rows(read_range(path, offset, length), first, request, where, report)

                data = read_span(fd, offset, length, where)
                rows = _plain_rows(data, line, request, where, report)
                yield RowsBlock(rows, spec, request.window, again)
                line += data.count(b"\n")
        finally:
            # Before the file closes: a worker still reading must not read a closed (or reused) descriptor.
            pool.shutdown(wait=True, cancel_futures=True)


def _columnar_block(
    fd: int,
    offset: int,
    length: int,
    path: Path,
    spec: CandidateSpec,
    request: ReadRequest,
    report: LineReport,
    wary: bool = False,
) -> _ColumnarBlock | _OddLines | None:
    """The block read and parsed the columnar way, prepared for the finder (on a worker thread); or its
    good lines parsed so, with the odd ones left for the caller's plain code (_OddLines); or None when it
    must be read row by row. Its first line number is set by the caller, who counts the lines.

    `wary` (an earlier block of the read had odd lines): a block with a line that is not one object goes
    to the odd-lines path at once, as polars' parse of the whole block would fail at that line, after
    parsing the rest (~7 ms a block). A clean file never pays for the look."""
    import polars as pl

    data = read_span(fd, offset, length, str(path))
    # One cut into lines for both tries (a blank line is null: only the odd-lines path reads past it).
    lines = polars_lines(data, empty=True) if data.endswith(b"\n") else None
    cut = None
    if lines is not None and (not wary or lines.to_frame("line").select(_one_object(pl.col("line")).all()).item()):
        cut = _cut(data, lines)
    parsed = None if cut is None else _columnar_keys(data, spec, request, cut)
    if parsed is None:
        return _odd_lines(data, lines, spec, request)
    block = _ColumnarBlock(parsed, path, offset=offset, length=length, first_line=0, request=request, report=report)
    block.prepare()
    return block


def _plain_rows(data: bytes, first_line: int, request: ReadRequest, where: str, report: LineReport) -> list[Row]:
    """The block's rows as the plain read types them (skipping what it skips)."""
    rows = []
    lines = data.split(b"\n")
    for index, raw_line in enumerate(lines):
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            raise Unavailable from None  # the plain read reports what the file looks like
        try:
            row = typed_json_line(text, first_line + index, request, where)
        except MalformedLine as exc:
            if index == len(lines) - 1 and raw_line:
                exc = MalformedLine(where, first_line + index, f"truncated last line ({exc.reason})", causes=exc.causes)
            report.skip(exc)
            continue
        if row is not None:
            rows.append(row)  # the filter is the key frame's: rows it rejects are read, and counted
    return rows


class _BlockKeys(NamedTuple):
    """What the columnar pass learns of a block: its key frame, and where each line ends (the byte offset
    after its line break, from the block's start; None when that is not certain)."""

    keys: pl.DataFrame
    ends: pl.Series | None


class _ColumnarBlock(KeyedBlock):
    """Keeps only the key frame, where the block is and where its lines end; the candidates' lines are
    read again (alone, when they are few), so blocks waiting for their bins to finish cost little memory."""

    def __init__(
        self,
        parsed: _BlockKeys,
        path: Path,
        *,
        offset: int,
        length: int,
        first_line: int,
        request: ReadRequest,
        report: LineReport,
    ) -> None:
        self.keys, self.ends = parsed
        self.path, self.offset, self.length = path, offset, length
        self.first_line, self.request, self.report = first_line, request, report

    def _lines(self, records: list[int]) -> Iterator[bytes]:
        """Each record's line, without its LF (a CRLF line keeps its CR, which JSON reads as whitespace)."""
        if self.ends is None:
            lines = read_range(self.path, self.offset, self.length).split(b"\n")
            if records and max(records) >= len(lines):  # (a line now blank reads as no row: also Unavailable)
                raise Unavailable  # fewer lines than the first pass read, in as many bytes: the file changed
            yield from (lines[index] for index in records)
            return
        ends = self.ends.to_list()
        pieces = [(ends[index - 1] if index else 0, ends[index] - 1) for index in records]  # each line less its LF
        yield from read_pieces(self.path, self.offset, self.length, pieces)

    def rows(self, records: list[int]) -> Iterator[Row]:
        where = str(self.path)
        for index, line in zip(records, self._lines(records), strict=True):
            # The columns the first pass read are known good; the others are typed (and may be bad) here.
            try:
                row = typed_json_line(line.decode("utf-8"), self.first_line + index, self.request, where)
            except MalformedLine as exc:
                if exc.causes == EVERY_READ and not _polars_reads(line):
                    raise Unavailable from None  # the first pass read a row here; now it is no JSON row at all
                self.report.skip(exc)
                continue
            if row is None:
                raise Unavailable  # the first pass read a row on this line, which is blank now: the file changed
            if self.request.window.contains(row[TIME]):
                yield row


def _polars_reads(line: bytes) -> bool:
    """Whether polars still parses the line as one JSON object, as the first pass did: a line json refuses
    and polars reads (nesting of ~1000 levels) is the same line, skipped as the plain read skips it; a line
    neither reads is not the one the first pass read (judged by content, not by the file's size or mtime,
    which an append changes and a copy that keeps times does not)."""
    import polars as pl

    try:
        return pl.read_ndjson(line + b"\n", schema={TIME: pl.String}).height == 1
    except pl.exceptions.PolarsError:
        return False


def _names_once(data: bytes, lines: pl.Series, frame: pl.DataFrame, required: set[str]) -> bool:
    """True when every line names each of the frame's columns (its key columns, read as strings) once
    when it has a value, at most once when it has none (once, as `"column":null`, when the column is
    required: present, as the plain code needs it), and the block writes no key with a \\u escape.

    One regex pass in native code counts every `name"` of every column, line by line: a literal
    alternation, which the regex engine's SIMD prefilter finds several times faster than the quoted
    `"name"` (every quote would be a candidate). A match ends at a string's closing quote (an escaped
    quote follows a backslash, not a letter), so matches cannot overlap and every quoted name is among
    them, with perhaps other strings ending in a name. A column with a value is named in its line, so a
    line with as many matches as values names each of those once and no other. Only the other lines
    (a null key present, a name twice, a value ending in a name) are looked at column by column.
    """
    import polars as pl

    columns = frame.columns
    if not all(_PLAIN_NAME.fullmatch(c) for c in columns):
        return False
    # memchr for a backslash first (most blocks hold none), then one pass for both kinds of escape
    if b"\\" in data and lines.str.contains(f"{_ESCAPED_KEY}|{_SURROGATE_ESCAPE}").any():
        if lines.str.contains(_ESCAPED_KEY).any():
            return False  # a key written with an escape: polars and json.loads may see a name twice, or not
        if _lone_surrogates(lines):
            return False  # polars reads a lone high surrogate escape as U+0000, the plain code as U+FFFD
    if not columns:
        return True
    names = lines.str.count_matches("(?:" + "|".join(columns) + ')"')
    if not any(frame[c].null_count() for c in columns):
        unsure = names != len(columns)  # every line has a value for every column
    else:
        values = frame.select(pl.sum_horizontal(pl.col(c).is_not_null() for c in columns).alias("values"))["values"]
        unsure = names != values
    for column in columns:
        if column in required and frame[column].null_count():
            unsure = unsure | frame[column].is_null()
    if not unsure.any():
        return True
    # The lines left: each column named once if it has a value, else at most once (required: as null).
    look = frame.filter(unsure).with_columns(lines.filter(unsure).alias("_line_text"))
    line = pl.col("_line_text")
    good: list[pl.Expr] = []
    for column in columns:
        named = line.str.count_matches(f'"{column}"', literal=True)
        if column in required and look[column].null_count():
            good.append(named == 1)
            good.append(pl.col(column).is_not_null() | _written_null(line, column))
        else:
            good.append((named == 1) | (pl.col(column).is_null() & (named == 0)))
    return bool(look.select(pl.all_horizontal(good).all().alias("ok"))["ok"][0])


def _written_null(line: pl.Expr, column: str) -> pl.Expr:
    """Per line: the line writes `"column": null` as its own key, once.

    It is the line's own key unless it is a nested object's (a "{" after the line's first) or the end of
    a key with an escaped quote, like "a\\"name" (a quote before the name that is escaped): such a line
    is not taken for one, and goes to the plain code, which tells a missing column from a null.
    """
    flat = ~line.str.contains(f'\\"{column}"', literal=True) & ~line.str.slice(1).str.contains("{", literal=True)
    return (
        (line.str.count_matches(f'"{column}"', literal=True) == 1) & (line.str.count_matches(f'"{column}":\\s*null') == 1) & flat
    )


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


# What polars makes of a JSON number, boolean, object or array read as a string (str() of the same value
# may differ: 1.0 is "1.0" to Python, "1" to polars). A value not like this came from a JSON string.
_NOT_FROM_A_STRING = r"^(?:-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|true|false)$|^[\[{]"


def _from_json_strings(lines: pl.Series, values: pl.Series, column: str) -> bool:
    """True when every non-null value of the column was a JSON string (each line names it at most once:
    _names_once).

    Only a value like polars' rendering of a JSON number, boolean, object or array (addresses and host
    names never are) may have been something else: its line must write `"name":"` (with JSON whitespace
    around the colon), which cannot occur inside a JSON string, where a quote is escaped. Those lines
    alone are searched, in polars (no GIL).
    """
    return not _not_written_as_string(lines, values.str.contains(_NOT_FROM_A_STRING).fill_null(False), column).any()


def _all_from_json_strings(lines: pl.Series, frame: pl.DataFrame, columns: list[str]) -> bool:
    """_from_json_strings of each of the frame's `columns`, in one polars call when no value is suspect.

    A block's key columns hold few distinct values (servers, addresses): those are looked at first, all
    columns in one select (~1.5 ms a JSON Lines block against ~3.6 for every value of each column); only a
    column with a suspect value is looked at line by line."""
    import polars as pl

    if not columns:
        return True
    suspects = frame.select(pl.col(c).unique().str.contains(_NOT_FROM_A_STRING).any() for c in columns).row(0)
    return all(_from_json_strings(lines, frame[c], c) for c, suspect in zip(columns, suspects, strict=True) if suspect)


def _not_written_as_string(lines: pl.Series, suspect: pl.Series, column: str) -> pl.Series:
    """Per line: `suspect` (its value may not have been a JSON string), and the line does not write the
    column's value once as a JSON string. Only the suspect lines are searched."""
    if not suspect.any():
        return suspect
    written = lines.filter(suspect).str.count_matches(_written_as_string(column)) == 1
    return suspect.scatter(suspect.arg_true().filter(written), False)


def _written_as_string(column: str) -> str:
    """A pattern of the column's key followed by a JSON string value (`"name": "`, JSON whitespace
    around the colon), which cannot occur inside a JSON string, where a quote is escaped."""
    return f'"{column}"[ \\t\\r]*:[ \\t\\r]*"'


class _Cut(NamedTuple):
    """A block cut into lines: polars_lines of it (no blank line among them), and where each line ends
    (_line_ends; None when that is not certain, the lines having been counted instead)."""

    lines: pl.Series
    ends: pl.Series | None


def _cut(data: bytes, lines: pl.Series | None = None) -> _Cut | None:
    """The block cut into lines as polars cuts them, or None when that may not be the plain read's cut.
    `lines`: polars_lines(data), when the caller has it."""
    if not data.endswith(b"\n"):
        return None  # a last line without its line break: maybe truncated; the plain code decides
    if lines is None:
        lines = polars_lines(data)
    if lines is None or lines.null_count():
        return None  # a blank line, a NUL byte or invalid UTF-8: the plain code decides
    crlf = _crlf_count(data, lines)
    if crlf is None:
        return None  # a CR that is not part of a line break: polars may cut a line there, the plain code does not
    # Line ends that add up to the block prove one polars line per line break; else the breaks are counted.
    ends = _line_ends(data, lines, crlf)
    if ends is None and lines.len() != data.count(b"\n"):
        return None
    return _Cut(lines, ends)


def _columnar_keys(
    data: bytes,
    spec: CandidateSpec,
    request: ReadRequest,
    cut: _Cut | None = None,
    parsed: pl.DataFrame | None = None,
    times: pl.Series | None = None,
) -> _BlockKeys | None:
    """The KeyedBlock.keys of one block (record = line) and its line ends, or None when it must be read
    row by row. What the caller has worked out already: `cut`, _cut(data); `parsed`, the block's key
    columns as strings; `times`, vectorised_times of parsed's TimeGenerated. With both `cut` and
    `parsed` (a block's good lines), `data` is only looked at for a backslash, so the whole block will do."""
    if cut is None and (cut := _cut(data)) is None:
        return None
    lines_frame, ends = cut
    wanted = first_pass_columns(spec, request)
    required = set(request.required) | {TIME}
    if parsed is None and (decoded := decoded_keys(data, lines_frame, wanted, required)) is not None:
        # Decoded as json.loads decodes it: every key value was read from its own key, strings from strings.
        if decoded[TIME].null_count():
            return None  # a row without its time: the plain code says which
        typed = _typed(decoded, wanted, lambda: True, times)
        return None if typed is None else _BlockKeys(keys_frame(typed, spec, request.window), ends)
    frame = _key_strings(data, wanted) if parsed is None else parsed
    if frame is None or frame.height != lines_frame.len():
        return None  # blank lines: the plain code decides
    if frame[TIME].null_count():
        return None  # a row without its time: the plain code says which
    # A required column null: polars reads a missing key and a null alike; _names_once tells them apart
    # (the plain code skips a line missing it, and reads `"column": null` as "" or null, as _typed does).
    if not _names_once(data, lines_frame, frame.select(wanted), required):
        return None
    if not _all_from_json_strings(lines_frame, frame, [c for c in wanted if COLUMN_TYPES[c] == "string" and c != TIME]):
        return None
    typed = _typed(frame, wanted, lambda: _from_json_strings(lines_frame, frame[TIME], TIME), times)
    return None if typed is None else _BlockKeys(keys_frame(typed, spec, request.window), ends)


# A block with more odd lines than this share is read row by row: the columnar pass would save little.
_ODD_SHARE = 0.25
_DEEP = 64  # a line with more '[' than this is guessed too deep for polars' parser (it takes 40 levels)


class _OddLines(NamedTuple):
    """A block the columnar pass could not read whole: the keys of its good lines, read the columnar way
    (their RECORD counts good lines only), and its odd lines, for the plain code to type once the block's
    first line number is known (on the reading thread, so skipped lines are reported in file order)."""

    good: _BlockKeys  # keys of the good lines, as _columnar_keys reads them alone
    good_lines: pl.Series  # the block's line index of each good line (UInt32)
    odd: list[tuple[int, str]]  # (line index, the line as the plain read decodes it)
    lines: int
    ends: pl.Series | None  # the block's line ends (see _line_ends)

    def completed(
        self, path: Path, offset: int, length: int, first_line: int, request: ReadRequest, report: LineReport
    ) -> _ColumnarBlock:
        """The block with every line's keys: the odd lines typed by the plain code, exactly as the plain
        read types them (a line it skips is reported here, and keeps a record that is never kept)."""
        import polars as pl

        spec = request.candidates
        assert spec is not None  # noqa: S101 - a columnar read has a spec
        where = str(path)
        rows: list[Row] = []
        typed_at: list[int] = []
        refused: list[int] = []
        for index, text in self.odd:
            try:
                row = typed_json_line(text, first_line + index, request, where)
            except MalformedLine as exc:
                report.skip(exc)
                row = None
            if row is None:
                refused.append(index)
            else:
                rows.append(row)
                typed_at.append(index)
        good = self.good.keys
        parts = [good.with_columns(self.good_lines.alias(RECORD))]
        if rows:
            parts.append(rows_frame(rows, spec, request.window).with_columns(pl.Series(RECORD, typed_at, dtype=pl.UInt32)))
        if refused:
            # A record per refused line too (never in the window, never kept), so records stay line numbers.
            def nothing(name: str, dtype: Any) -> pl.Expr:
                if name == RECORD:
                    return pl.col(RECORD)
                return (pl.lit(False) if dtype == pl.Boolean else pl.lit(None, dtype=dtype)).alias(name)

            blank = pl.DataFrame({RECORD: refused}, schema={RECORD: pl.UInt32})
            parts.append(blank.select([nothing(name, dtype) for name, dtype in good.schema.items()]))
        keys = pl.concat(parts).sort(RECORD)
        block = _ColumnarBlock(
            _BlockKeys(keys, self.ends), path, offset=offset, length=length, first_line=first_line, request=request, report=report
        )
        block.prepare()
        return block


def _odd_lines(data: bytes, lines: pl.Series | None, spec: CandidateSpec, request: ReadRequest) -> _OddLines | None:
    """The block's good lines read the columnar way, and its odd lines (not JSON, not an object, a key
    written twice or with an escape, a lone surrogate, no TimeGenerated, a value the columnar typing
    refuses: whatever would send the whole block to the plain code) set apart; or None when the block
    must be read row by row (odd lines are too many, or the good lines still cannot be read so).

    Which lines are odd is only a guess, made line by line in polars: the good lines are then read by
    _columnar_keys as a block of their own, with every guard, so the guess decides speed, never a row.
    `lines`: polars_lines(data, empty=True).
    """
    import polars as pl

    if not data.endswith(b"\n") or lines is None:
        return None
    wanted = first_pass_columns(spec, request)
    if not all(_PLAIN_NAME.fullmatch(c) for c in wanted):
        return None
    crlf = _crlf_count(data, lines)
    if crlf is None:
        return None
    named = [c for c in wanted if b'"' + c.encode() + b'"' in data]  # a column no line names is left to the guards
    line = pl.col("line")
    # Lines polars' parser refuses, guessed cheaply (a whole-block parse fails at one; finding them for
    # sure takes json_path_match, a JSON parse of every line, ~50 ms a block): not one object on the line
    # (cut, an array, a string, trailing text), a NaN or Infinity, deep nesting. Not a raw control
    # character: no JSON writer leaves one, and a character class without a literal in it is the one
    # pattern polars' regex cannot skip ahead for (7 ms a block, every odd block); a corrupt file that
    # has them pays json_path_match instead.
    odd = (
        line.is_null()
        | ~_one_object(line)
        | line.str.contains(r":\s*-?(?:NaN|Infinity)\s*[,}\]]")
        | (line.str.count_matches("[", literal=True) > _DEEP)
    )
    if named:
        odd = odd | (line.str.count_matches("(?:" + "|".join(named) + ')"') != len(named))
    if b"\\" in data:
        odd = odd | line.str.contains(_ESCAPED_KEY)
    frame = lines.rename("line").to_frame()
    odd_lines = frame.select(odd.fill_null(True).alias("odd"))["odd"]
    if b"\\" in data:
        odd_lines = odd_lines | _lone_surrogate_lines(lines)
    ends = _line_ends(data, lines, crlf)
    if ends is None:  # line breaks of both kinds (or a BOM): cut as the plain read cuts
        raw = data.split(b"\n")
        if len(raw) != lines.len() + 1:  # the block ends in a line break: the last piece is empty
            return None
        ends = pl.Series(list(itertools.accumulate(len(line) + 1 for line in raw[:-1])))
    starts = [0, *ends.to_list()]  # where each line starts (a line is its bytes to its LF: a CRLF line keeps its CR)
    good = _good_lines(lines, ~odd_lines, data, starts, spec, request)
    if good is None:
        return None
    keep, parsed = good
    left = [(index, data[starts[index] : starts[index + 1] - 1].decode("utf-8")) for index in (~keep).arg_true()]
    return _OddLines(parsed, keep.arg_true().cast(pl.UInt32), left, lines.len(), ends)


def _one_object(line: pl.Expr) -> pl.Expr:
    """Whether the line may be one JSON object (it starts with `{` and ends with `}`)."""
    return line.str.starts_with("{") & line.str.ends_with("}")


def _good_lines(
    lines: pl.Series, keep: pl.Series, data: bytes, starts: list[int], spec: CandidateSpec, request: ReadRequest
) -> tuple[pl.Series, _BlockKeys] | None:
    """Which lines are good (`keep`, per line: the lines not guessed odd), less those whose JSON polars
    refuses or whose values the columnar typing refuses, and their keys (_columnar_keys on them alone);
    or None. What changes from step to step is the mask, not filtered copies of the lines' texts."""
    wanted = first_pass_columns(spec, request)
    view = memoryview(data)

    def text(keep: pl.Series) -> bytes:
        """The good lines' bytes: the block less the runs of other lines (a few copies, not a join of every line)."""
        pieces, at = [], 0
        for index in (~keep).arg_true():
            pieces.append(view[starts[at] : starts[index]])
            at = index + 1
        pieces.append(view[starts[at] :])
        return b"".join(pieces)  # one copy: the pieces are views

    def few(keep: pl.Series) -> bool:
        kept = int(keep.sum())
        return not kept or keep.len() - kept > _ODD_SHARE * keep.len()

    if few(keep):
        return None
    good_text = text(keep)
    values = _key_strings(good_text, wanted)
    if values is None:  # a line polars refuses (not JSON, not an object, NaN, nested too deep): serde_json's say
        keep = keep & lines.str.json_path_match(f"$.{TIME}").is_not_null()
        if few(keep):
            return None
        good_text = text(keep)
        if (values := _key_strings(good_text, wanted)) is None:
            return None
    refused, times = _odd_values(lines.filter(keep), values, set(request.required) | {TIME})
    if refused.any():
        keep = keep.scatter(keep.arg_true().filter(refused), False)
        values = values.filter(~refused)
        times = None if times is None else times.filter(~refused)
        if few(keep):
            return None
    # The whole block for `data`: only its backslashes are looked at (the ends are the block's, in _OddLines).
    parsed = _columnar_keys(data, spec, request, _Cut(lines.filter(keep), None), values, times)
    return None if parsed is None else (keep, parsed)


def _key_strings(data: bytes, wanted: tuple[str, ...]) -> pl.DataFrame | None:
    """The block's key columns as strings (polars renders a number, a boolean, an object as text), or
    None when polars refuses a line."""
    import polars as pl

    try:
        return pl.read_ndjson(data, schema=dict.fromkeys(wanted, pl.String))  # bytes: no copy into a BytesIO
    except pl.exceptions.PolarsError:
        return None


def _odd_values(lines: pl.Series, values: pl.DataFrame, required: set[str]) -> tuple[pl.Series, pl.Series | None]:
    """Per line (values: its key columns read as strings): a value the columnar typing refuses or cannot
    tell from another (a required column null or missing, a string column written as a number, a time
    or an integer the plain code's own parse refuses), so the whole block would be read row by row; and
    vectorised_times of the time column (None without one), for the typing to reuse.

    Only the lines whose value could have been something other than a JSON string are searched for how
    the line writes it (_not_written_as_string), as _from_json_strings does."""
    import polars as pl

    odd = pl.repeat(False, values.height, dtype=pl.Boolean, eager=True)
    vectorised = None
    for column in values.columns:
        value = values[column]
        if column == TIME:
            odd = odd | value.is_null()
        elif column in required and value.null_count():
            # Null or missing: only a line that writes `"column": null` is read so (the rest: the plain code's).
            nulls = value.is_null()
            written = lines.filter(nulls).to_frame("line").select(_written_null(pl.col("line"), column).alias("w"))["w"]
            odd = odd | nulls.scatter(nulls.arg_true().filter(written), False)
        if column == TIME:
            # A time parse_datetime refuses, or one outside the set typed in polars not written as a JSON string.
            vectorised = vectorised_times(value)
            stamps = parse_times(value, vectorised)
            odd = odd | stamps.is_null() | _not_written_as_string(lines, stamps.is_not_null() & vectorised.is_null(), column)
        elif COLUMN_TYPES[column] == "string":
            odd = odd | _not_written_as_string(lines, value.str.contains(_NOT_FROM_A_STRING).fill_null(False), column)
        else:
            simple = value.is_in(["", "-"]) | value.str.contains(PLAIN_INTEGER)
            refused = _refused(value.filter(~simple.fill_null(True)).unique(), tolong)
            odd = odd | value.is_in(refused.implode()).fill_null(False)
    return odd.fill_null(False), vectorised


def _refused(texts: pl.Series, parse: Callable[[str], object]) -> pl.Series:
    """The texts `parse` refuses (raises ValueError or OverflowError, or returns None)."""
    refused = []
    for text in texts:
        try:
            if parse(text) is None:
                refused.append(text)
        except (ValueError, OverflowError):
            refused.append(text)
    return texts.__class__(texts.name, refused, dtype=texts.dtype)


def _crlf_count(data: bytes, lines: pl.Series) -> int | None:
    """How many of the block's line breaks are CRLF, or None when it has a CR outside one (or, with CRs,
    starts with a BOM).

    `lines`: polars_lines of the block, which cuts at every LF and drops the CR before one (and a BOM at
    the start, refused here so that the count is exact). A CR it keeps is not before an LF, and the
    bytes it drops are the CRs of CRLFs. Worked out in polars, without a pass over the bytes in Python,
    which holds the GIL (a regex search and a count took 8 ms a block, three times per odd block).
    """
    if b"\r" not in data:  # memchr: LF files pay nothing more
        return 0
    if data.startswith(BOM) or lines.str.contains("\r", literal=True).any():
        return None
    return len(data) - int(lines.str.len_bytes().sum() or 0) - lines.len()


def _line_ends(data: bytes, lines: pl.Series, crlf: int) -> pl.Series | None:
    """Where each line ends (after its LF), in bytes from the block start, from the lines' lengths
    (polars_lines drops the LF, and the CR of a CRLF; `crlf`: the block's CRLF count); None unless
    every line ends alike and the lengths add up to the block."""
    if crlf not in (0, lines.len()) or len(data) >= 2**32:
        return None
    ends = (lines.str.len_bytes().fill_null(0) + (2 if crlf else 1)).cum_sum()  # a blank line (null) is its break
    return ends if ends.len() and ends[-1] == len(data) else None


def _lone_surrogates(lines: pl.Series) -> bool:
    """True when some line holds a surrogate escape that is not half of a high-low pair (an escaped
    backslash before `u` counts too: that only sends the block to the plain code)."""
    return bool(_lone_surrogate_lines(lines).any())


def _lone_surrogate_lines(lines: pl.Series) -> pl.Series:
    """Per line: it holds a surrogate escape that is not half of a high-low pair (see _lone_surrogates)."""
    import polars as pl

    line = pl.col("line")
    surrogates = line.str.count_matches(_SURROGATE_ESCAPE)
    pairs = line.str.count_matches(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
    return lines.rename("line").to_frame().select((surrogates != 2 * pairs).fill_null(False).alias("lone"))["lone"]


_SURROGATE_ESCAPE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"

# A string holding a \\u escape and then followed by a colon: a key written with an escape (json.loads and
# polars could then see the same key twice). Matched line by line in polars (Rust regex, no GIL).
_ESCAPED_KEY = r'\\u[0-9a-fA-F]{4}(?:[^"\\]|\\.)*"\s*:'


def _typed(
    frame: pl.DataFrame, wanted: tuple[str, ...], times_were_strings: Callable[[], bool], times: pl.Series | None = None
) -> pl.DataFrame | None:
    """`_t` (candidates.typed_times) and the columns typed as coerce_row types them, or None when a value
    needs the plain code. `times`: vectorised_times(frame[TIME]), when the caller has it."""
    import polars as pl

    stamps = typed_times(frame[TIME], times_were_strings, times)
    if stamps is None:
        return None
    # Vectorised over every row: cheaper than typing distinct values and joining them back.
    out: list[pl.Expr] = []
    for column in wanted:
        if column == TIME:
            continue
        value = pl.col(column)
        if COLUMN_TYPES[column] == "string":
            out.append(value.fill_null(""))
            continue
        digits = value.str.contains(PLAIN_INTEGER)
        simple = value.is_null() | value.is_in(["", "-"]) | digits
        odd = frame.select(value.filter(~simple).unique())[column]
        if not odd.len():
            # Digits (at most 18: Int64's range), "", "-" or null: the cast reads the digits and nulls the rest.
            out.append(value.cast(pl.Int64, strict=False))
            continue
        # Other text (a sign, spaces, leading zeros past 18 digits: `-1`, ` 8080`, `+81`) is typed by
        # tolong, as coerce_value types it, once per distinct value. A JSON number polars renders so
        # (its digits; a whole float's without `.0`) is the same integer to coerce_value; any text tolong
        # refuses (a fraction, `true`, an object) leaves the block to the plain code, which says why.
        numbers: dict[str, int] = {}
        for text in odd:
            number = tolong(text)
            if number is None:
                return None
            numbers[text] = number
        typed_odd = value.replace_strict(numbers, default=None, return_dtype=pl.Int64)
        out.append(pl.when(digits).then(value.cast(pl.Int64, strict=False)).otherwise(typed_odd).alias(column))
    return frame.select(out).insert_column(0, stamps) if out else stamps.to_frame()


@register_source("file")
def _open(argument: str, settings: Settings) -> Source:
    return FileSource(Path(argument), strict=settings.strict)
