"""A saved Log Analytics query response body (`{"tables":[{"name","columns","rows"}]}`), read as a stream.

JsonStream reads the document value by value with json's own decoder (memory: a chunk and one value);
the plain read (file.py) types each row it yields. The columnar first pass (read_response_candidates)
gives the pushdown layer (candidates.py) a key frame per block of rows.
"""

from __future__ import annotations

import codecs
import json
import re
from array import array
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import InputError
from detector.models import Row
from detector.pushdown import TIME, CandidateSpec
from detector.sources import LineReport, MalformedLine, ReadRequest, representable, typed
from detector.sources.candidates import (
    CandidateRead,
    KeyedBlock,
    Unavailable,
    candidate_rows,
    describe_binary,
    keys_frame,
    microseconds,
    skip_bom,
)
from detector.w3ciislog import COLUMN_TYPES, coerce_value

if TYPE_CHECKING:
    import polars as pl

_WHITESPACE = re.compile(r"[ \t\r\n]*")
STREAM_CHUNK = 1 << 20


def not_utf8(data: bytes, exc: UnicodeDecodeError, offset: int) -> str:
    """Why the bytes are not UTF-8 text, naming the byte offset and what the file looks like."""
    looks = describe_binary(data[:4])
    position = offset + exc.start
    return f"is not UTF-8 at byte {position} ({exc.reason})" + (
        f"; it looks like {looks}" if looks else "; save the file as UTF-8"
    )


class NotStreamable(Exception):  # noqa: N818 - a signal to load the document whole, never shown to a user
    """The response's layout needs the whole document (rows before columns, no PrimaryResult first)."""


class JsonStream:
    """Values of a JSON document read from a binary handle chunk by chunk (memory: a chunk and one value).

    Each value is parsed by json's own decoder (raw_decode), so values are exactly json.load's.
    """

    def __init__(self, handle: Any, start: int, where: str) -> None:
        self.handle, self.where, self.offset = handle, where, start
        self.text, self.pos, self.eof = "", 0, False
        self.base = 0  # characters dropped from the front of text so far
        self.value_start = 0  # where the last value() began, in characters from the start
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.json = json.JSONDecoder()

    def _more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        chunk = self.handle.read(max(STREAM_CHUNK, len(self.text) - self.pos))  # grows for a long value
        try:
            text = self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise InputError(self.where, not_utf8(chunk, exc, self.offset)) from None
        self.offset += len(chunk)
        self.eof = not chunk
        if self.pos > STREAM_CHUNK:
            self.base += self.pos
            self.text, self.pos = self.text[self.pos :], 0
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

    def expect(self, char: str) -> None:
        """Consume one structural character."""
        if self.peek() != char:
            raise InputError(self.where, f"not a valid Log Analytics response: '{char}' expected at byte ~{self.offset}")
        self.pos += 1

    def value(self) -> Any:
        """The next JSON value."""
        self.peek()
        while True:
            try:
                value, end = self.json.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                if self._more():
                    continue
                raise InputError(self.where, f"not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise InputError(self.where, "JSON nested too deeply to be W3CIISLog rows") from None
            if end == len(self.text) and self._more():
                continue  # a number may continue in the next chunk
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
            self.expect("}")
            return

    def byte_at(self, character: int) -> int:
        """The file offset of a character still in the buffer (counted from the start, as value_start)."""
        undecoded = self.decoder.getstate()[0]
        return self.offset - len(undecoded) - len(self.text[character - self.base :].encode("utf-8"))

    def la_tables(self) -> Iterator[tuple[str, Any]]:
        """("columns", [...]) then ("row", [...]) for each row of the PrimaryResult table (the first one)."""
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
                yield from self._table()
                streamed = True
                while self.peek() == ",":
                    self.pos += 1
                    self.value()  # other tables (statistics, ...): not W3CIISLog rows
                self.expect("]")
            else:
                self.value()
        if not streamed:
            raise InputError(self.where, "a Log Analytics response needs a non-empty 'tables' list")

    def _table(self) -> Iterator[tuple[str, Any]]:
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
                if self.peek() == "]":
                    self.pos += 1
                    continue
                while True:
                    yield "row", self.value()
                    if self.peek() == ",":
                        self.pos += 1
                        continue
                    self.expect("]")
                    break
            else:
                self.value()
        if not columns:
            raise InputError(self.where, "each table needs 'columns' (with 'name') and 'rows'")


# -- the columnar first pass over a saved Log Analytics response ----------------------------------------

RESPONSE_BLOCK_ROWS = 20_000  # rows per key frame: as many as a JSON Lines block holds


def read_response_candidates(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> CandidateRead:
    """Rows of candidate groups of a saved response; raises Unavailable before returning any row."""
    return candidate_rows(lambda: _response_blocks(path, request, spec, report), spec)


def _response_blocks(path: Path, request: ReadRequest, spec: CandidateSpec, report: LineReport) -> Iterator[KeyedBlock]:
    """The response's rows in blocks: each row is parsed by json's decoder (as the plain stream does), the
    key columns of a block are typed by the plain code once per distinct value, and a block keeps only its
    key frame and where its rows start in the file (taking rows parses that stretch again)."""
    where = str(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(where, f"cannot open ({exc.strerror}); check the path after 'file:'") from None
    wanted = list(spec.columns())
    with handle:
        start = skip_bom(handle)
        stream = JsonStream(handle, start, where)
        names: list[str] = []
        positions: list[int] = []
        raw: list[list[Any]] = [[] for _ in wanted]
        starts = array("q")  # where each row of the block starts, in characters from the block's start
        index = first_index = first_byte = first_character = 0
        try:
            for event, payload in stream.la_tables():
                if event == "columns":
                    try:
                        names = [c["name"] for c in payload]
                    except (KeyError, TypeError):
                        raise Unavailable from None  # the plain read reports it
                    if any(c not in names for c in request.required):
                        raise Unavailable
                    positions = [names.index(c) if c in names else -1 for c in wanted]
                    continue
                if index == first_index:
                    first_character = stream.value_start
                    first_byte = stream.byte_at(first_character)
                starts.append(stream.value_start - first_character)
                label = f"row {index}"
                index += 1
                if isinstance(payload, list) and len(payload) == len(names):
                    for values, position in zip(raw, positions, strict=True):
                        values.append(payload[position] if position >= 0 else None)
                else:
                    report.skip(MalformedLine(where, label, f"must be a list of {len(names)} values"))
                    for values in raw:
                        values.append(_MALFORMED)
                if index - first_index == RESPONSE_BLOCK_ROWS:
                    span = (first_byte, stream.byte_at(stream.base + stream.pos))
                    yield _response_block(raw, wanted, names, path, span, starts, first_index, request, spec, report)
                    raw, starts, first_index = [[] for _ in wanted], array("q"), index
        except NotStreamable:
            raise Unavailable from None
        if index > first_index:
            span = (first_byte, stream.byte_at(stream.base + stream.pos))
            yield _response_block(raw, wanted, names, path, span, starts, first_index, request, spec, report)


_MALFORMED = object()  # a row the plain read skips (not a list of the columns)
_FAR_PAST = -(2**62)  # the time given to a row that is skipped: outside any window, so never kept or counted


def _response_block(
    raw: list[list[Any]],
    wanted: list[str],
    names: list[str],
    path: Path,
    span: tuple[int, int],
    starts: array[int],
    first_index: int,
    request: ReadRequest,
    spec: CandidateSpec,
    report: LineReport,
) -> KeyedBlock:
    """A block's key frame: every key value typed by coerce_value (the plain code), once per distinct value.
    A key value the plain code refuses (rare) sends the file to the plain read, which reports the row."""
    import polars as pl

    where = str(path)
    count = len(raw[0])
    bad = [value is _MALFORMED for value in raw[0]]
    columns: dict[str, list[Any]] = {}
    for column, values in zip(wanted, raw, strict=True):
        typed_of: dict[tuple[type, Any], Any] = {}
        out: list[Any] = []
        for record, value in enumerate(values):
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
                raise Unavailable  # the plain read skips and reports the row, with its own message
            out.append(result)
        columns[column] = out
    times = [(_FAR_PAST if bad[r] or columns[TIME][r] is None else columns[TIME][r]) for r in range(count)]
    schema: dict[str, Any] = {"_t": pl.Int64}
    data: dict[str, list[Any]] = {"_t": times}
    for column in wanted:
        if column == TIME:
            continue
        string = COLUMN_TYPES[column] == "string"
        schema[column] = pl.String if string else pl.Int64
        data[column] = [("" if string else None) if bad[r] else columns[column][r] for r in range(count)]
    frame = pl.DataFrame(data, schema=schema)
    keys = keys_frame(frame, spec, request.window)
    return _ResponseBlock(keys, path, span, starts, first_index, names, request, report)


class _ResponseBlock(KeyedBlock):
    """Rows of a saved response from row `first_index`: their bytes are span (start, end) of the file,
    and row r starts at character starts[r] of that text, so taking a row parses that row alone."""

    def __init__(
        self,
        keys: pl.DataFrame,
        path: Path,
        span: tuple[int, int],
        starts: array[int],
        first_index: int,
        names: list[str],
        request: ReadRequest,
        report: LineReport,
    ) -> None:
        self.keys, self.path, self.span, self.starts, self.first_index = keys, path, span, starts, first_index
        self.names, self.request, self.report = names, request, report

    def rows(self, records: list[int]) -> Iterator[Row]:
        where = str(self.path)
        text = _read_range(self.path, self.span[0], self.span[1] - self.span[0]).decode("utf-8", errors="replace")
        decoder = json.JSONDecoder()
        taken: list[Row] = []
        for record in records:
            try:
                payload, _ = decoder.raw_decode(text, self.starts[record])
            except (json.JSONDecodeError, RecursionError):
                payload = None
            if not isinstance(payload, list) or len(payload) != len(self.names):
                raise InputError(where, "changed while it was read; run again")
            try:
                row = typed(dict(zip(self.names, payload, strict=True)), self.request, where, f"row {self.first_index + record}")
            except MalformedLine as exc:
                self.report.skip(exc)
                continue
            if self.request.window.contains(row[TIME]):
                taken.append(row)
        return iter(taken)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    """Bytes of the file read before (a block read again to take its candidates' rows)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise InputError(str(path), "changed while it was read (it is shorter now); run again")
    return data
