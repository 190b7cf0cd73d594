"""Candidate pushdown for IIS W3C log files (the fast path of `iis:`).

Files are read in blocks of whole lines (the next block is read and byte-scanned on a worker thread
meanwhile), cut further at directive lines (#Fields may change mid-file), so each run of entries has
one layout. polars' CSV reader (native code, space separated, no quoting) reads only date, time, c-ip,
s-ip, s-port and the last field of a run; candidates.candidate_rows finds the groups that can fire and
asks for those entries only, which are parsed by W3cLayout.entry, the code of the plain path. Results
are therefore identical to the plain path's.

Exactness guards: a run of entries takes the columnar path only when every entry has exactly as many
fields as #Fields declares (the space count is exactly entries x (fields - 1) and the last field is
present in every entry), date and time are canonical (yyyy-mm-dd, hh:mm:ss) and valid for
datetime.fromisoformat, s-port is "-" or plain digits, and the fields whose values are used are valid
UTF-8. Any other run is read entry by entry with the plain code (same rows, same errors with
file:line). A file with lone '\r' line breaks is left to the plain path entirely.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from io import FileIO
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from detector.errors import InputError
from detector.logic import CandidateSpec
from detector.models import Row
from detector.sources.candidates import (
    BIN,
    KeyedBlock,
    candidate_rows,
    group_hash,
    key_frame,
    microseconds,
    span_microseconds,
)
from detector.sources.iis import FIELD_TO_COLUMN, IisLogSource, W3cLayout
from detector.sources.jsonl_candidates import Unavailable
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.sources import ReadRequest

BLOCK_BYTES = 16 << 20  # ~100k entries per polars call; under glibc's 32 MB mmap threshold, so buffers are reused
_TIME = r"^[0-9]{2}:[0-9]{2}:[0-5][0-9]$"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_PLAIN_PORT = r"^[0-9]{1,18}$"
_LONE_CR = re.compile(rb"\r[^\n]")
_BOM = b"\xef\xbb\xbf"
_COLUMN_TO_FIELD = {column: field for field, column in FIELD_TO_COLUMN.items()}


def pushdown_applies(spec: CandidateSpec) -> bool:
    """Keys are Computer (constant here) and logged string fields; the distinct column an integer field."""
    import importlib.util

    logged = [k for k in spec.keys if k != "Computer"]
    return (
        all(k in _COLUMN_TO_FIELD and COLUMN_TYPES.get(k) == "string" for k in logged)
        and spec.distinct_column in _COLUMN_TO_FIELD
        and COLUMN_TYPES.get(spec.distinct_column) in ("int", "long")
        and importlib.util.find_spec("polars") is not None
    )


def read_candidate_rows(source: IisLogSource, request: ReadRequest, spec: CandidateSpec) -> Iterator[Row]:
    """Rows of candidate groups only; raises Unavailable (or InputError) before returning any row."""
    import polars as pl

    files = source.files()
    try:
        return candidate_rows(lambda: _all_blocks(files, source.computer, request, spec), spec)
    except (pl.exceptions.PolarsError, UnicodeEncodeError, OverflowError):
        raise Unavailable from None


def _all_blocks(files: list[Path], computer: str, request: ReadRequest, spec: CandidateSpec) -> Iterator[KeyedBlock]:
    for path in files:
        yield from _file_blocks(path, computer, request, spec)


def _file_blocks(path: Path, computer: str, request: ReadRequest, spec: CandidateSpec) -> Iterator[KeyedBlock]:
    try:
        handle = path.open("rb", buffering=0)
    except OSError as exc:
        raise InputError(str(path), f"cannot open ({exc.strerror})") from None
    layout = W3cLayout.initial(path, request, computer)
    window = (microseconds(request.window.start), microseconds(request.window.end))
    line = 1
    with handle, closing(_scanned_blocks(handle)) as blocks:
        for block in blocks:
            if block.lone_cr:
                raise Unavailable
            data = block.data
            for start, end, spaces in block.parts:
                if spaces < 0:
                    text = data[start:end].decode("utf-8", errors="replace").rstrip("\r\n")
                    layout = layout.directive(text, line)
                    line += 1
                    continue
                entries = data if start == 0 and end == len(data) else data[start:end]
                keys = _columnar_keys(entries, spaces, layout, spec, window)
                if keys is not None:
                    yield _ColumnarRun(keys, entries, line, layout)
                    line += keys.height  # one record per line: _columnar_keys checked it
                else:
                    yield _PlainRun(entries, line, layout, spec)
                    line += entries.count(b"\n")


@dataclass(frozen=True)
class _ScannedBlock:
    """A block of whole lines and what the byte scans found in it."""

    data: bytes
    lone_cr: bool  # a CR not followed by LF: a line break to the plain path's universal newlines, not to polars
    parts: list[tuple[int, int, int]]  # (start, end, spaces) of each run of entries; spaces -1: a directive line


def _scan(data: bytes) -> _ScannedBlock:
    """Find directive lines, count each run's spaces (for the field-count check) and look for lone CRs."""
    if b"\r" in data and (_LONE_CR.search(data) or data.endswith(b"\r")):  # memchr first: LF files pay nothing
        return _ScannedBlock(data, True, [])
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
    return _ScannedBlock(data, False, parts)


def _scanned_blocks(handle: FileIO) -> Generator[_ScannedBlock, None, None]:
    """The file's blocks, scanned; the next block is read and scanned on a worker thread meanwhile.

    The reads and byte scans (~40 % of a block's time) run while the caller is in polars, which
    releases the GIL, so on two cores they mostly cost no wall time. Order and results are those of
    reading and scanning block after block: one worker, one block ahead.
    """
    from concurrent.futures import ThreadPoolExecutor  # polars imports it anyway

    start = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
    blocks = line_blocks(handle, start, BLOCK_BYTES)

    def next_block() -> _ScannedBlock | None:
        data = next(blocks, None)
        return None if data is None else _scan(data)

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
    def __init__(self, keys: pl.DataFrame, data: bytes, first_line: int, layout: W3cLayout) -> None:
        self.keys, self.data, self.first_line, self.layout = keys, data, first_line, layout

    def rows(self, records: list[int]) -> Iterator[Row]:
        times: dict[str, datetime] = {}
        for index, text in zip(records, _lines(self.data, records, self.keys.height), strict=True):
            row = self.layout.entry(text, self.first_line + index, times)
            if row is not None:
                yield row


def _lines(data: bytes, records: list[int], height: int) -> list[str]:
    """The text of these lines (sorted indices) as the plain path reads them (decoded, line break removed).

    polars, told that a line is one field (separator NUL), cuts the lines in native code, several times
    faster than bytes.split; it refuses a NUL byte (more fields) and invalid UTF-8, and then bytes.split
    with errors="replace" decoding does it. Either way a line loses its CRLF or LF only: the caller
    checked there is no lone CR.
    """
    import polars as pl

    try:
        lines = pl.read_csv(
            data, separator="\x00", has_header=False, quote_char=None, schema={"line": pl.String}, n_rows=records[-1] + 1
        )["line"]
    except pl.exceptions.PolarsError:
        pass
    else:
        if lines.len() == min(height, records[-1] + 1) and not lines.null_count():
            return lines.gather(records).to_list()
    split = data.split(b"\n", records[-1] + 1)
    return [split[index].decode("utf-8", errors="replace").rstrip("\r\n") for index in records]


def line_blocks(handle: FileIO, start: int, block_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines from `start` (the last may lack its line break), about block_bytes each.

    One reused buffer and one copy per block: reading into fresh 10+ MB objects costs a page fault per
    4 KB page, more than the copy. A line longer than the buffer grows it.
    """
    buffer = bytearray(block_bytes)
    view = memoryview(buffer)
    offset = start
    while True:
        handle.seek(offset)
        size = 0
        while size < len(buffer):
            got = handle.readinto(view[size:])
            if not got:
                break
            size += got
        if size == 0:
            return
        cut = size if size < len(buffer) else buffer.rfind(b"\n", 0, size) + 1
        if cut == 0:  # one line longer than the buffer
            view.release()
            buffer = bytearray(2 * len(buffer))
            view = memoryview(buffer)
            continue
        yield bytes(view[:cut])
        offset += cut


class _PlainRun(KeyedBlock):
    def __init__(self, data: bytes, first_line: int, layout: W3cLayout, spec: CandidateSpec) -> None:
        bin_us = span_microseconds(spec.time_bin)
        times: dict[str, datetime] = {}
        self._rows: list[Row] = []
        keys = []
        for index, raw_line in enumerate(data.split(b"\n")):
            text = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text:
                continue
            row = layout.entry(text, first_line + index, times)
            if row is not None:
                self._rows.append(row)
                t = microseconds(row["TimeGenerated"])
                keys.append((t // bin_us * bin_us, *(row[k] for k in spec.keys), row[spec.distinct_column]))
        self.keys = key_frame(keys, spec)

    def rows(self, records: list[int]) -> Iterator[Row]:
        return (self._rows[i] for i in records)


def _columnar_keys(
    data: bytes, spaces: int, layout: W3cLayout, spec: CandidateSpec, window: tuple[int, int]
) -> pl.DataFrame | None:
    """The KeyedBlock.keys of a run of entries (record = line), or None when it must be read entry by entry.

    polars reads only date, time, the keys, s-port and the last field of #Fields. Field counts: a line
    with fewer fields than declared, or a blank line, leaves the last field null (-> None), so every
    line has at least len(fields) - 1 spaces; the run's space count being exactly lines x (fields - 1)
    then means every line has exactly len(fields) fields, as W3cLayout.entry requires, and there is one
    record per line. (polars stops reading a line at the last projected field, so it cannot see extra
    fields itself; reading all of them would cost twice the count.)
    """
    import polars as pl

    fields = layout.fields
    if fields is None or layout.time_index is None:
        return None  # entries before #Fields: the plain code reports them
    index_of = dict(layout.plan)
    names = [f"column_{i + 1}" for i in range(len(fields))]
    used = {layout.time_index}  # the fields whose values are used (the last one is read only for its count)
    if layout.date_index is not None:
        used.add(layout.date_index)
    for column in (*spec.keys, spec.distinct_column):
        index = index_of.get(column)
        if index is not None:
            used.add(index)
    frame = _read_fields(data, names, sorted(used | {len(fields) - 1}), sorted(used))
    if frame is None or frame[names[-1]].null_count() or spaces != frame.height * (len(fields) - 1):
        return None
    moments = _moments(frame, layout, names)
    if moments is None:
        return None
    port_index = index_of.get(spec.distinct_column)
    if port_index is None:
        port = pl.lit(None, dtype=pl.Int64)
    else:
        text = frame[names[port_index]]
        if text.null_count():
            return None  # an empty s-port field: the plain code reports it
        seen = text.unique()  # a few hundred values: check each once
        if not (seen.eq("-") | seen.str.contains(_PLAIN_PORT)).all():
            return None
        port = pl.col(names[port_index]).cast(pl.Int64, strict=False)  # "-" -> null, digits -> their value
    keys = []
    for key in spec.keys:
        index = index_of.get(key)
        if key == "Computer":
            keys.append(pl.lit(layout.computer).alias(key))
        elif index is None:
            keys.append(pl.lit("").alias(key))  # not logged: "" as the plain code fills it
        else:
            keys.append(pl.col(names[index]).fill_null("").alias(key))  # an empty field is "" to the plain code
    bin_us = span_microseconds(spec.time_bin)
    t = pl.col("_t")
    return frame.with_columns(moments.alias("_t")).select(
        (t // bin_us * bin_us).alias(BIN),
        group_hash(keys),
        port.alias(spec.distinct_column),
        ((t >= window[0]) & (t < window[1])).alias("_in_window"),
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_record"),
    )


def _read_fields(data: bytes, names: list[str], read: list[int], used: list[int]) -> pl.DataFrame | None:
    """These fields of space-separated entries as strings, or None when polars cannot read them exactly.

    Invalid UTF-8 anywhere in the run makes the strict reader fail; the run is then read again with
    invalid bytes replaced by U+FFFD. A field without invalid bytes reads the same either way (the plain
    path's errors="replace" decoding never merges a space into an invalid sequence); dates, times and
    ports are checked by pattern later, and a used field holding U+FFFD makes the run fall back to the
    plain code.
    """
    import polars as pl

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
