"""A saved Log Analytics query response body (`{"tables":[{"name","columns","rows"}]}`), read as a stream.

JsonStream reads the document value by value with json's own decoder (memory: a chunk and one value);
the plain read (file.py) types each row it yields. The first pass of the pushdown (read_response_candidates)
gives the pushdown layer (candidates.py) a key frame per block of rows:

- rows are scanned by json's C scanner from the positions the plain read's loop would parse them at, in
  one tight loop over the buffer (JsonStream.array_rows), so values and errors are json.load's; a row's
  list is dropped as soon as its key values are taken (memory: a chunk and a block's key values);
- a block's key values are typed in polars when polars holds them exactly as coerce_value types them
  (str, int, canonical TimeGenerated; see _Rows._typed), else by coerce_value itself;
- a block keeps its key frame and where each row starts, so taking a candidate parses that row alone;
- anything the plain read would report (invalid JSON, a truncated body, an error member, a missing
  column), a layout the stream cannot follow (rows before columns) and a key value the plain code
  refuses send the whole response to the plain read, which then says what it says.
"""

from __future__ import annotations

import codecs
import gc
import itertools
import json
import operator
import re
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import InputError
from detector.models import Row
from detector.pushdown import TIME, CandidateSpec
from detector.sources import LineReport, MalformedLine, ReadRequest, has_lone_surrogate, nesting_safe, representable, typed
from detector.sources.candidates import (
    CandidateRead,
    KeyedBlock,
    Unavailable,
    candidate_rows,
    describe_binary,
    first_pass_columns,
    keys_frame,
    microseconds,
    open_input,
    parse_times,
    read_pieces,
    skip_bom,
)
from detector.w3ciislog import COLUMN_TYPES, coerce_value

if TYPE_CHECKING:
    import polars as pl

_WHITESPACE = re.compile(r"[ \t\r\n]*")
STREAM_CHUNK = 1 << 20
# More than the characters a token cut by a chunk's end leaves unread (`fals`, `\u00d`, `-1.5e+`) where
# the scanner stops or errs: a value ending, or an error, this close to the buffer's end reads on.
_CUT_TOKEN = 16


def not_utf8(data: bytes, exc: UnicodeDecodeError, offset: int) -> str:
    """Why the bytes are not UTF-8 text, naming the byte offset and what the file looks like."""
    looks = describe_binary(data[:4])
    position = offset + exc.start
    return f"is not UTF-8 at byte {position} ({exc.reason})" + (
        f"; it looks like {looks}" if looks else "; save the file as UTF-8"
    )


@dataclass
class ScannedRows:
    """Rows read by JsonStream.array_rows: `keys` holds each row's kept values, row after row (None for a
    row in `bad`, the rows that are not a list of the columns); row r starts at byte starts[r] from the
    first row's; `span` is the rows' bytes in the file."""

    keys: list[Any]
    starts: array[int]
    bad: list[int]
    span: tuple[int, int]
    closed: bool


Taker = Callable[[Any], "tuple[Any, ...] | None"]  # a row's kept values, or None for a row the plain read skips


def _getter(kept: list[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """A function giving the items at `kept` (positions of a list, or keys of a dict), as a tuple."""
    if len(kept) > 1:
        return operator.itemgetter(*kept)
    if kept:
        position = kept[0]
        return lambda row: (row[position],)
    return lambda row: ()


def list_taker(width: int, kept: list[int]) -> Taker:
    """For a response's rows: a list of `width` values gives its values at positions `kept`."""
    get = _getter(kept)
    return lambda value: get(value) if type(value) is list and len(value) == width else None


def object_taker(wanted: list[str], required: list[str]) -> Taker:
    """For an array of row objects: an object gives its values of `wanted` (None when absent: the plain
    read types an absent column as a null), or None when it is not an object or lacks a `required` column
    (the plain read skips it)."""
    needed = wanted + [column for column in required if column not in wanted]
    get, count = _getter(needed), len(wanted)
    trim = count < len(needed)

    def take(value: Any) -> tuple[Any, ...] | None:
        if type(value) is not dict:
            return None
        try:
            values = get(value)
        except KeyError:
            if any(column not in value for column in required):
                return None
            return tuple(value.get(column) for column in wanted)
        return values[:count] if trim else values

    return take


class NotStreamable(Exception):  # noqa: N818 - a signal to load the document whole, never shown to a user
    """The response's layout needs the whole document (rows before columns, no PrimaryResult first)."""


class JsonStream:
    """Values of a JSON document read from a binary handle chunk by chunk (memory: a chunk and one value).

    Each value is parsed by json's own decoder (raw_decode), so values are exactly json.load's.
    `count_lines`: keep the line count that error messages give (a first pass, whose errors send the file
    to the plain read, which says them itself, does without: 5% of an indented body's read).
    """

    def __init__(self, handle: Any, start: int, where: str, *, count_lines: bool = True) -> None:
        self.handle, self.where, self.offset = handle, where, start
        self.count_lines = count_lines
        self.text, self.pos, self.eof = "", 0, False
        self.base = 0  # characters dropped from the front of text so far
        self.byte_base = start  # the file offset of text's first character
        self.lines = 0  # line breaks in them, for the line numbers of errors
        self.line_start = 0  # where the line that holds the buffer's start begins, in characters from the start
        self.value_start = 0  # where the last value() began, in characters from the start
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.json = json.JSONDecoder()

    def _more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.handle.read(max(STREAM_CHUNK, len(self.text) - self.pos))  # grows for a long value
        pending = self.decoder.getstate()[0]  # the start of a character cut by the last chunk's end
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:  # exc.start counts from the pending bytes
            raise InputError(self.where, not_utf8(pending + chunk, exc, self.offset - len(pending))) from None
        read_to = self.offset - len(pending)  # the file offset after text's last character
        self.offset += len(chunk)
        self.eof = not chunk
        if self.pos > STREAM_CHUNK:
            if self.count_lines:
                self.lines += self.text.count("\n", 0, self.pos)
                last_break = self.text.rfind("\n", 0, self.pos)
                if last_break >= 0:
                    self.line_start = self.base + last_break + 1
            self.base += self.pos
            self.text, self.pos = self.text[self.pos :], 0
            # From the end: what is left of the buffer is short (the rows before it were read).
            self.byte_base = read_to - (len(self.text) if self.text.isascii() else len(self.text.encode("utf-8")))
        self.text += text
        return True

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end)."""
        if self.pos < len(self.text) and self.text[self.pos] not in " \t\r\n":
            return self.text[self.pos]  # the usual case, once per value: no regex call
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or not self._more():
                return self.text[self.pos : self.pos + 1]

    def expect(self, char: str, *, after_item: bool = False) -> None:
        """Consume one structural character (after an item of an array or object, a ',' was possible too)."""
        found = self.peek()
        if found != char:
            expected = f"',' or '{char}'" if after_item else f"'{char}'"
            what = f"found {found!r}" if found else "found the end of the file: is it cut short?"
            where, at = self.place(self.base + self.pos)
            raise InputError(where, f"not valid JSON: {expected} expected at {at}, {what}")
        self.pos += 1

    def place(self, character: int) -> tuple[str, str]:
        """(`file:line`, "column C, byte B") of a character still in the buffer, for an error message
        (without count_lines: (`file`, "byte B"))."""
        if not self.count_lines:
            return self.where, f"byte {self.byte_at(character)}"
        index = character - self.base
        line = self.lines + self.text.count("\n", 0, index) + 1
        last_break = self.text.rfind("\n", 0, index)
        line_start = self.base + last_break + 1 if last_break >= 0 else self.line_start
        return f"{self.where}:{line}", f"column {character - line_start + 1}, byte {self.byte_at(character)}"

    def value(self) -> Any:
        """The next JSON value."""
        self.peek()
        while True:
            try:
                value, end = nesting_safe(self.json.raw_decode, self.text, self.pos)
            except json.JSONDecodeError as exc:
                # Only an error the buffer's end may have caused reads on (else a bad value mid-file would
                # read the rest of the file into memory): the scanner reached the end, inside a string or
                # a few characters before it (a cut `tru`, `\u00`).
                ran_out = exc.pos >= len(self.text) - _CUT_TOKEN or exc.msg.startswith("Unterminated string")
                if ran_out and self._more():
                    continue
                where, at = self.place(self.base + exc.pos)
                raise InputError(where, f"not valid JSON ({exc.msg}, {at})") from None
            except ValueError as exc:  # an integer longer than Python converts (4,300 digits)
                where, at = self.place(self.base + self.pos)
                raise InputError(where, f"a value Python cannot read, at {at} ({exc})") from None
            except RecursionError:
                raise InputError(self.where, "JSON nested too deeply to be W3CIISLog rows") from None
            if end > len(self.text) - _CUT_TOKEN and self._more():
                continue  # a number may continue in the next chunk (`1.` then `5`, `1e` then `5`)
            self.value_start = self.base + self.pos
            self.pos = end
            return value

    def members(self) -> Iterator[str]:
        """The keys of an object, leaving the stream at each key's value."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            key = self.value()
            self.expect(":")
            yield key
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("}", after_item=True)
            return

    def byte_at(self, character: int) -> int:
        """The file offset of a character still in the buffer (counted from the start, as value_start):
        from the buffer's start or its end, whichever is nearer (UTF-8 lengths need an encode)."""
        index = character - self.base
        if self.text.isascii():  # a flag of the str: no scan
            return self.byte_base + index
        if 2 * index <= len(self.text):
            return self.byte_base + len(self.text[:index].encode("utf-8"))
        undecoded = self.decoder.getstate()[0]
        return self.offset - len(undecoded) - len(self.text[index:].encode("utf-8"))

    def array_rows(self, limit: int, take: Taker, values: int, closer: str = "]") -> ScannedRows:
        """Up to `limit` rows of the array being read (the stream just after its '[' or a ','): each row's
        `values` values given by `take` (list_taker, object_taker; a row it gives None for is in `bad`,
        with `values` Nones); where each
        row starts; and whether the array's ']' was read. `closer` is the last character of a row ("]" for
        a list, "}" for an object): the loop's hint of where whole rows end.

        The rows and errors are the value() loop's (json's scanner, from the same positions), without its
        Python work per value: rows separated by ',' (whitespace allowed) are scanned in one tight loop
        over the buffer, and a row's list is dropped as soon as its kept values are taken (a block of
        rows held whole would cost a page fault per 4 KB). A row that may run past the buffer's end, or
        anything else, goes through value(), peek() and expect() as the plain read's loop does.
        """
        origin = self.base + self.pos
        first_byte = self.byte_at(origin)
        blank = (None,) * values
        keys: list[Any] = []
        starts = array("q")
        bad: list[int] = []
        extend = keys.extend
        scan = self.json.scan_once  # type: ignore[attr-defined]  # what raw_decode calls: json's C scanner
        space = _WHITESPACE.match
        closed = False
        while len(starts) < limit:
            text, pos = self.text, self.pos
            size = len(text)
            found: list[int] = []  # where this buffer's rows start, in characters of text
            mark = found.append
            # The rows before the buffer's last "]," (or "},") are whole (a hint: when it is wrong, a row's
            # scan fails and that row is read the careful way).
            stop = text.rfind(closer + ",", pos) + 1
            count = len(starts)
            collecting = gc.isenabled()
            gc.disable()  # the scanner makes many small lists: the collector would walk them for nothing
            try:
                while pos < stop and count < limit:
                    try:
                        value, end = scan(text, pos)
                    except StopIteration:
                        if text[pos] in " \t\r\n":
                            pos = space(text, pos).end()  # type: ignore[union-attr]
                            continue
                        break
                    except (ValueError, RecursionError):  # a JSONDecodeError, or an integer too long for Python
                        break
                    if end >= size:
                        break  # a row holding a "]," (a wrong hint) may end just at the buffer's end
                    separator = text[end]
                    if separator != ",":
                        if separator in " \t\r\n":
                            end = space(text, end).end()  # type: ignore[union-attr]
                            separator = text[end : end + 1]
                        if separator == "]":
                            closed = True
                        elif separator != ",":
                            break  # the end of the buffer, or not JSON: the careful way says what the plain read says
                    got = take(value)
                    if got is None:
                        bad.append(count)
                        got = blank
                    extend(got)
                    mark(pos)
                    count += 1
                    pos = end + 1
                    if closed:
                        break
            finally:
                if collecting:
                    gc.enable()
            if found:  # in bytes from the first row's (taking a row then reads its bytes alone)
                at = self.byte_at(self.base + found[0]) - first_byte
                if text.isascii():
                    starts.extend(at - found[0] + row for row in found)
                else:
                    before = found[0]
                    for row in found:
                        at += len(text[before:row].encode("utf-8"))
                        before = row
                        starts.append(at)
            self.pos = pos
            if closed or count >= limit:
                break
            if pos >= stop and size - pos < STREAM_CHUNK and self._more():
                continue  # the buffer's last row: read on (the buffer stays a chunk or two)
            value = self.value()
            got = take(value)
            if got is None:
                bad.append(count)
                got = blank
            extend(got)
            starts.append(self.byte_at(self.value_start) - first_byte)
            if self.peek() == ",":
                self.pos += 1
            else:
                self.expect("]", after_item=True)
                closed = True
                break
        span = (first_byte, self.byte_at(self.base + self.pos))
        if starts and starts[-1] < 1 << 32:
            starts = array("I", starts)  # half the memory of a block held until the end of the read
        return ScannedRows(keys, starts, bad, span, closed=closed)

    def la_tables(self, bulk: bool = False) -> Iterator[tuple[str, Any]]:
        """("columns", [...]) then ("row", [...]) for each row of the PrimaryResult table (the first one).

        With `bulk`, one ("rows", None) instead of the rows, with the stream just inside the rows array:
        the caller reads its values and its closing ']' (array_values) before asking for the next event.
        """
        streamed = False
        for key in self.members():
            if key == "error":
                error = self.value()
                if error:
                    code = error.get("code") if isinstance(error, dict) else error
                    raise InputError(self.where, f"the saved response carries an error ({code}); its rows may be incomplete")
            elif key == "tables" and not streamed:
                self.expect("[")
                if self.peek() == "]":
                    self.pos += 1
                    continue  # an "error" member may follow and say why
                yield from self._table(bulk)
                streamed = True
                while self.peek() == ",":
                    self.pos += 1
                    self.value()  # other tables (statistics, ...): not W3CIISLog rows
                self.expect("]", after_item=True)
            else:
                self.value()
        if not streamed:
            raise InputError(self.where, "a Log Analytics response needs a non-empty 'tables' list")

    def _table(self, bulk: bool) -> Iterator[tuple[str, Any]]:
        columns = rows = False
        for key in self.members():
            if key == "name":
                if self.value() != "PrimaryResult":
                    if rows:
                        raise InputError(self.where, "the first table, whose rows were read, is not PrimaryResult")
                    raise NotStreamable
            elif key == "columns":
                yield "columns", self.value()
                columns = True
            elif key == "rows":
                if not columns:
                    raise NotStreamable
                self.expect("[")
                rows = True
                if bulk:
                    yield "rows", None
                    continue
                if self.peek() == "]":
                    self.pos += 1
                    continue
                while True:
                    yield "row", self.value()
                    if self.peek() == ",":
                        self.pos += 1
                        continue
                    self.expect("]", after_item=True)
                    break
            else:
                self.value()
        if not columns:
            raise InputError(self.where, "each table needs 'columns' (with 'name') and 'rows'")


# -- the columnar first pass over a saved Log Analytics response ----------------------------------------

RESPONSE_BLOCK_ROWS = 20_000  # rows per key frame: as many as a JSON Lines block holds


def read_response_candidates(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> CandidateRead:
    """Rows of candidate groups of a saved response; raises Unavailable before returning any row."""
    return candidate_rows(lambda: _response_blocks(path, request, spec, report), spec, str(path))


def _response_blocks(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> Iterator[KeyedBlock]:
    """The response's rows in blocks of RESPONSE_BLOCK_ROWS: parsed by json's scanner as the plain read
    parses them (JsonStream.array_rows), their key columns typed in polars (or, for odd values, by the
    plain code), and each block keeps only its key frame and where its rows start in the file (taking
    rows parses those rows again). Anything the plain read would report as an error (or a layout the
    stream cannot follow) raises Unavailable: the plain read then reads the file and says what it says."""
    where = str(path)
    handle = open_input(path)
    wanted = list(first_pass_columns(spec, request))
    with handle:
        stream = JsonStream(handle, skip_bom(handle), where, count_lines=False)
        names: list[str] = []
        positions: list[int] = []
        index = 0  # rows are counted across the table's "rows" members, as the plain read counts them
        try:
            for event, payload in stream.la_tables(bulk=True):
                if event == "columns":
                    try:
                        names = [c["name"] for c in payload]
                    except (KeyError, TypeError):
                        raise Unavailable from None  # the plain read reports it
                    if any(c not in names for c in request.required):
                        raise Unavailable
                    last = {name: position for position, name in enumerate(names)}  # dict(zip()) keeps the last
                    positions = [last.get(column, -1) for column in wanted]
                    continue
                closed = stream.peek() == "]"
                if closed:
                    stream.pos += 1
                kept = [position for position in positions if position >= 0]
                while not closed:
                    scanned = stream.array_rows(RESPONSE_BLOCK_ROWS, list_taker(len(names), kept), len(kept))
                    closed = scanned.closed
                    explain = _explainer(path, scanned, names, request, index)
                    keys = _Rows(scanned, names, positions, wanted, index).keys(spec, request, where, report, explain)
                    yield _ResponseBlock(keys, path, scanned, index, names, request, report)
                    index += len(scanned.starts)
        except (NotStreamable, InputError):
            # The plain read follows this layout, or finds this error, in its own way (and words).
            raise Unavailable from None


def read_array_candidates(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> CandidateRead:
    """Rows of candidate groups of a JSON array of row objects; raises Unavailable before returning any row."""
    return candidate_rows(lambda: _array_blocks(path, request, spec, report), spec, str(path))


def _array_blocks(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> Iterator[KeyedBlock]:
    """A JSON array of row objects (what `az monitor log-analytics query` prints) in blocks, read as a saved
    response's rows are: scanned by json's scanner, key values typed in polars, each block keeping its key
    frame and where its rows start. An element the plain read skips (not an object, a required column
    missing, a key value it refuses) is skipped in its words; invalid JSON or anything after the array
    raises Unavailable: the plain read then says what it says."""
    where = str(path)
    handle = open_input(path)
    wanted = list(first_pass_columns(spec, request))
    take = object_taker(wanted, list(request.required))
    positions = list(range(len(wanted)))
    with handle:
        stream = JsonStream(handle, skip_bom(handle), where, count_lines=False)
        index = 0
        try:
            stream.expect("[")
            closed = stream.peek() == "]"
            if closed:
                stream.pos += 1
            while not closed:
                scanned = stream.array_rows(RESPONSE_BLOCK_ROWS, take, len(wanted), closer="}")
                closed = scanned.closed
                explain = _explainer(path, scanned, None, request, index)
                keys = _Rows(scanned, wanted, positions, wanted, index).keys(spec, request, where, report, explain)
                yield _ResponseBlock(keys, path, scanned, index, None, request, report)
                index += len(scanned.starts)
            if stream.peek():
                raise Unavailable  # something after the array: json.load's "Extra data"
        except InputError:
            raise Unavailable from None


_MALFORMED = object()  # a row the plain read skips (not a list of the columns)
Explainer = Callable[[int], MalformedLine | None]  # why the plain read skips a block's record (None: it does not)


def _explainer(path: Path, scanned: ScannedRows, names: list[str] | None, request: ReadRequest, first_index: int) -> Explainer:
    """What the plain read says of a record of these rows (a saved response's, or an array's with `names`
    None): the row is parsed again from the file and typed by the plain code."""
    where = str(path)

    def explain(record: int) -> MalformedLine | None:
        index = first_index + record
        for _, text in _row_texts(path, scanned.span, scanned.starts, [record]):
            try:
                payload, _ = nesting_safe(json.JSONDecoder().raw_decode, text, 0)
            except (ValueError, RecursionError):
                return None
            if names is None:
                if not isinstance(payload, dict):
                    return MalformedLine(where, f"row {index}", "must be a JSON object of W3CIISLog columns")
                raw = payload
            elif isinstance(payload, list) and len(payload) == len(names):
                raw = dict(zip(names, payload, strict=True))
            else:
                return MalformedLine(where, f"row {index}", f"must be a list of {len(names)} values")
            try:
                typed(raw, request, where, f"row {index}")
            except MalformedLine as exc:
                # Without its traceback, whose frames lead back to the caller's, which holds the error: a
                # cycle only the garbage collector frees, keeping the block's rows and text (~100 MB).
                return exc.with_traceback(None)
        return None

    return explain


def _row_texts(path: Path, span: tuple[int, int], starts: Sequence[int], records: list[int]) -> Iterator[tuple[int, str]]:
    """(record, text) for each record of rows that start at byte `starts` from the first row's within
    `span` of the file: each row's own bytes (to the next row's start, the separator after it included),
    never the span decoded whole."""
    first, end = span
    pieces = [(starts[record], starts[record + 1] if record + 1 < len(starts) else end - first) for record in records]
    for record, data in zip(records, read_pieces(path, first, end - first, pieces), strict=True):
        yield record, data.decode("utf-8", errors="replace")


_A_TIME = "2026-01-01T00:00:00Z"  # typed in polars in place of a bad row's time, then replaced by _FAR_PAST
_FAR_PAST = -(2**62)  # the time given to a row that is skipped: outside any window, so never kept or counted


def _held(column: str, items: list[Any]) -> pl.Series | None:
    """The key values as a polars Series, when polars holds every one as coerce_value types it (see
    _polars_holds), else None."""
    import polars as pl

    integer = COLUMN_TYPES[column] in ("int", "long")
    if integer and not set(map(type, items)) <= {int, type(None)}:  # polars takes a bool for an integer
        return None
    try:
        return pl.Series(column, items, dtype=pl.Int64 if integer else pl.String, strict=True)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):  # a lone surrogate is a UnicodeError
        return None


def _polars_holds(column: str, value: Any) -> bool:
    """Whether polars holds this key value as coerce_value types it (see _Rows._typed)."""
    kind = type(value)
    if column == TIME:
        return kind is str
    if COLUMN_TYPES[column] == "string":
        return value is None or (kind is str and (value.isascii() or not has_lone_surrogate(value)))
    return value is None or (kind is int and -(2**63) <= value < 2**63)


class _Rows:
    """One block of scanned rows (row `first_index` of the response first) and the positions of the key
    columns `wanted` in a row (-1: not a column of the table)."""

    def __init__(self, scanned: ScannedRows, names: list[str], positions: list[int], wanted: list[str], first_index: int) -> None:
        self.count, self.bad, self.width, self.first_index = len(scanned.starts), scanned.bad, len(names), first_index
        present = [column for column, position in zip(wanted, positions, strict=True) if position >= 0]
        step = len(present)
        self.columns: dict[str, list[Any] | None] = dict.fromkeys(wanted)  # None: not a column of the table
        for offset, column in enumerate(present):
            self.columns[column] = scanned.keys[offset::step]

    def keys(self, spec: CandidateSpec, request: ReadRequest, where: str, report: LineReport, explain: Explainer) -> pl.DataFrame:
        """The block's key frame: typed in polars when every row is a list of the columns and every key
        value is what polars types exactly as the plain code does (other values by the plain code, row
        by row), else by the plain code throughout."""
        typed = self._typed(where)
        if typed is None:
            frame = self._coerced(where, report, explain)
        else:
            frame, refused = typed
            for record in refused:  # rows the plain read skips, typed as rows outside the window
                problem = explain(record)
                if problem is None:
                    raise Unavailable  # the plain code reads the row after all: the plain read decides
                report.skip(problem)
        return keys_frame(frame, spec, request.window)

    def _typed(self, where: str) -> tuple[pl.DataFrame, list[int]] | None:
        """`_t` and the key columns, as coerce_value types them, and the records the plain read skips
        (rows that are not rows, a key value coerce_value refuses: typed as rows outside the window); or
        None when the block needs the plain code's typing throughout.

        Values polars holds as they are are typed in polars: strings, Python str (or None: ""; a lone
        surrogate, which the plain code replaces, polars refuses); integers, Python int (not bool) in
        Int64's range; TimeGenerated, a str (parse_times: a time parse_datetime refuses skips the row). A
        row with any other key value (a number
        where a string belongs, "80" for a port, null for the time) is typed by coerce_value, row by row.
        """
        import polars as pl

        odd = set(self.bad)
        data: dict[str, pl.Series] = {}
        for column, values in self.columns.items():
            kind = COLUMN_TYPES[column]
            if values is None:  # not a column of the table: every value is null
                if kind not in ("string", "int", "long"):
                    return None
                absent = ("", pl.String) if kind == "string" else (None, pl.Int64)
                data[column] = pl.repeat(absent[0], self.count, dtype=absent[1], eager=True)
                continue
            filler = _A_TIME if column == TIME else None  # a row's own value is typed by the plain code
            items = values
            if column == TIME and self.bad:
                items = list(values)  # a row that is not a row holds Nones: its time, any valid one
                for record in self.bad:
                    items[record] = filler
            series = _held(column, items)
            if series is None:  # only then is each value looked at in Python (20M values in a 4M-row body)
                wrong = [record for record, value in enumerate(values) if not _polars_holds(column, value)]
                odd.update(wrong)
                items = list(items)
                for record in wrong:
                    items[record] = filler
                series = _held(column, items)
                if series is None:
                    return None
            data[column] = series.fill_null("") if kind == "string" else series
        stamps = parse_times(data[TIME]).rename("_t")  # every value a Python str: null where parse_datetime refuses it
        frame = pl.DataFrame(data).with_columns(stamps).drop(TIME)
        refused = set(self.bad)
        if stamps.null_count():  # a time the plain code refuses: it skips the row
            refused.update(frame.select(pl.arg_where(pl.col("_t").is_null()))["_t"].to_list())
        plain = sorted(odd - refused)
        if plain:
            typed_rows: dict[str, list[Any]] = {name: [] for name in frame.columns}
            typed_at: list[int] = []
            for record in plain:
                row = self._coerced_row(record, where)
                if row is None:
                    refused.add(record)
                    continue
                typed_at.append(record)
                for name in frame.columns:
                    typed_rows[name].append(row[TIME if name == "_t" else name])
            if typed_at:
                schema = frame.schema
                frame = frame.with_columns(
                    frame[name].scatter(typed_at, pl.Series(values, dtype=schema[name])) for name, values in typed_rows.items()
                )
        if refused:  # outside any window: never kept or counted
            frame = frame.with_columns(frame["_t"].scatter(sorted(refused), _FAR_PAST))
        return frame, sorted(refused)

    def _coerced_row(self, record: int, where: str) -> dict[str, Any] | None:
        """One record's key values as coerce_value types them (the time in epoch microseconds), or None
        when it refuses one."""
        row: dict[str, Any] = {}
        for column, values in self.columns.items():
            try:
                value = coerce_value(column, None if values is None else values[record], where)
            except (InputError, OverflowError):
                return None
            if isinstance(value, str):
                value = representable({column: value})[column]
            elif isinstance(value, datetime):
                value = microseconds(value)
            row[column] = value
        return row

    def _coerced(self, where: str, report: LineReport, explain: Explainer) -> pl.DataFrame:
        """The key frame's input typed by coerce_value (the plain code), once per distinct value. A row the
        plain read skips (not a row, a key value the plain code refuses) is skipped and reported in the
        plain read's words (`explain` types it again as the plain read does); one it cannot explain
        sends the file to the plain read."""
        import polars as pl

        count = self.count
        bad = [False] * count
        refused = list(self.bad)
        for record in refused:
            bad[record] = True
        columns: dict[str, list[Any]] = {}
        for column, items in self.columns.items():
            typed_of: dict[tuple[type, Any], Any] = {}
            out: list[Any] = []
            for record, value in enumerate(items if items is not None else [None] * count):
                if bad[record]:
                    out.append(None)
                    continue
                try:
                    key = (type(value), value)
                    result = typed_of.get(key, _MALFORMED)
                except TypeError:  # a list or object: unhashable, and refused below
                    key, result = None, _MALFORMED
                if result is _MALFORMED:
                    try:
                        result = coerce_value(column, value, where)
                        if isinstance(result, str):
                            result = representable({column: result})[column]
                        elif isinstance(result, datetime):
                            result = microseconds(result)
                    except (InputError, OverflowError):
                        result = _MALFORMED
                    if key is not None:
                        typed_of[key] = result
                if result is _MALFORMED:
                    bad[record] = True
                    refused.append(record)
                    result = None
                out.append(result)
            columns[column] = out
        for record in sorted(refused):
            problem = explain(record)
            if problem is None:
                raise Unavailable  # the plain code reads the row after all: the plain read decides
            report.skip(problem)
        times = [(_FAR_PAST if bad[r] or columns[TIME][r] is None else columns[TIME][r]) for r in range(count)]
        schema: dict[str, Any] = {"_t": pl.Int64}
        data: dict[str, list[Any]] = {"_t": times}
        for column in self.columns:
            if column == TIME:
                continue
            string = COLUMN_TYPES[column] == "string"
            schema[column] = pl.String if string else pl.Int64
            data[column] = [("" if string else None) if bad[r] else columns[column][r] for r in range(count)]
        return pl.DataFrame(data, schema=schema)


class _ResponseBlock(KeyedBlock):
    """Rows of a saved response (lists of the values of `names`) or of a JSON array of row objects (`names`
    None) from row `first_index`: where they are in the file (ScannedRows' span and starts), so taking a
    row parses that row alone."""

    def __init__(
        self,
        keys: pl.DataFrame,
        path: Path,
        scanned: ScannedRows,
        first_index: int,
        names: list[str] | None,
        request: ReadRequest,
        report: LineReport,
    ) -> None:
        self.keys, self.path, self.first_index, self.names = keys, path, first_index, names
        self.span = scanned.span
        self.request, self.report = request, report
        # Held until the end of a two-pass read: rows' lengths (2 bytes a row) where every row is shorter
        # than 64 KB, else their starts; the starts are worked out again only for a block that is taken.
        starts = scanned.starts
        lengths = [b - a for a, b in itertools.pairwise(starts)]
        self._first = starts[0] if starts else 0
        self._offsets: array[int] = array("H", lengths) if all(n < 1 << 16 for n in lengths) else starts

    @property
    def starts(self) -> array[int] | list[int]:
        """Where each row starts, in bytes from the block's start."""
        if self._offsets.typecode != "H":
            return self._offsets
        return list(itertools.accumulate(self._offsets, initial=self._first))

    def rows(self, records: list[int]) -> Iterator[Row]:
        where = str(self.path)
        decoder = json.JSONDecoder()
        taken: list[Row] = []
        for record, text in _row_texts(self.path, self.span, self.starts, records):
            try:
                payload, _ = nesting_safe(decoder.raw_decode, text, 0)
            except (ValueError, RecursionError):
                payload = None
            if self.names is None:
                if not isinstance(payload, dict):
                    raise InputError(where, "changed while it was read; run again")
                raw = payload
            elif isinstance(payload, list) and len(payload) == len(self.names):
                raw = dict(zip(self.names, payload, strict=True))
            else:
                raise InputError(where, "changed while it was read; run again")
            try:
                row = typed(raw, self.request, where, f"row {self.first_index + record}")
            except MalformedLine as exc:
                self.report.skip(exc)
                continue
            if self.request.window.contains(row[TIME]):
                taken.append(row)
        return iter(taken)
