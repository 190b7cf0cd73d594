"""Candidate pushdown for a JSON Lines file (the fast path of `file:`).

The file is read in blocks of whole lines. For each block polars (native code) parses only the five key
columns; candidates.candidate_rows finds the groups that can reach the threshold and asks the block for
the full rows of those records only, which are read with the very code the plain path uses (json.loads
+ coerce_row). So the rule sees the plain path's rows minus rows of groups that cannot fire, and its
results are identical.

Exactness guards. A block takes the columnar path only when polars parses it into one row per line,
no key is missing or null (polars reads both as null; the plain code tells them apart: "" for a null
string, an error for a missing column), TimeGenerated is the canonical `yyyy-mm-ddThh:mm:ss[.f]Z`, and
sPort is null, "", "-" or plain digits (a JSON number or a digit string; when some are null, the block
is checked to hold the key on every line). Any other block is read row by row
with the plain code (same rows, same errors with file:line). A file with lone '\\r' line breaks, or keys
polars cannot hold, is left to the plain path entirely (Unavailable).

Not guarded, because the W3CIISLog schema and RFC 8259 rule them out and checking costs a scan per key
per block (a third of the run time, measured): a JSON object that repeats a key column (json.loads
keeps the last value, polars the first) and a JSON number or boolean where cIP, Computer or sIP belongs
(str(1.0) is "1.0", polars writes "1"). Either could in theory split one group in the first pass.

Known difference: detail columns (csUserAgent, ...) are type-checked only in rows of candidate groups;
a malformed detail value in a row that cannot affect any finding is not reported (the plain path stops
on it). Key columns are checked in every row.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from detector.sources.file import typed_json_line

if TYPE_CHECKING:
    import polars as pl

    from detector.sources import ReadRequest

BLOCK_BYTES = 8 << 20  # ~20k rows: big enough to amortise polars calls, small enough to keep memory flat
TIME = "TimeGenerated"
_CANONICAL_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]{1,7})?Z$"
_PLAIN_PORT = r"^[0-9]{1,18}$"
_BOM = b"\xef\xbb\xbf"


class Unavailable(Exception):  # noqa: N818 - a signal to fall back, never shown to a user
    """The fast path cannot guarantee identical results for this file; use the plain path."""


def read_candidate_rows(path: Path, request: ReadRequest, spec: CandidateSpec) -> Iterator[Row]:
    """Rows of candidate groups only; raises Unavailable (or InputError) before returning any row."""
    import polars as pl

    try:
        return candidate_rows(lambda: _blocks(path, request, spec), spec)
    except (pl.exceptions.PolarsError, UnicodeEncodeError, OverflowError):
        raise Unavailable from None  # e.g. lone surrogates in a key read by the plain code: polars cannot hold them


def read_blocks(handle: Any, start: int, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, data) blocks of whole lines (the last may lack its newline)."""
    offset, carry = start, b""
    while True:
        chunk = handle.read(block_bytes)
        if not chunk:
            if carry:
                yield offset, carry
            return
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield offset, data[:cut]
        offset += cut


def _blocks(path: Path, request: ReadRequest, spec: CandidateSpec) -> Iterator[KeyedBlock]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(str(path), f"cannot open ({exc.strerror}); check the path after 'file:'") from None
    with handle:
        start = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
        handle.seek(start)
        window = (microseconds(request.window.start), microseconds(request.window.end))
        line = 1
        for offset, data in read_blocks(handle, start):
            if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
                raise Unavailable  # lone CR line breaks: the plain path's universal newlines decide lines
            keys = _columnar_keys(data, spec, window)
            if keys is not None:
                yield _ColumnarBlock(keys, path, offset=offset, length=len(data), first_line=line, request=request)
            else:
                yield _PlainBlock(data, line, request, spec, str(path))
            line += data.count(b"\n")


class _ColumnarBlock(KeyedBlock):
    """Keeps only the key columns and where the block is; its bytes are read again if it holds candidates
    (few blocks do), so blocks waiting for their bins to finish cost little memory."""

    def __init__(
        self, keys: pl.DataFrame, path: Path, *, offset: int, length: int, first_line: int, request: ReadRequest
    ) -> None:
        self.keys, self.path, self.offset, self.length, self.first_line, self.request = (
            keys,
            path,
            offset,
            length,
            first_line,
            request,
        )

    def rows(self, records: list[int]) -> Iterator[Row]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            lines = handle.read(self.length).split(b"\n")
        for index in records:
            row = _typed_row(lines[index], self.first_line + index, self.request, str(self.path))
            if row is not None and self.request.window.contains(row[TIME]):
                yield row


class _PlainBlock(KeyedBlock):
    def __init__(self, data: bytes, first_line: int, request: ReadRequest, spec: CandidateSpec, where: str) -> None:
        bin_us = span_microseconds(spec.time_bin)
        self._rows: list[Row] = []
        keys = []
        for index, raw_line in enumerate(data.split(b"\n")):
            row = _typed_row(raw_line, first_line + index, request, where)
            if row is not None and request.window.contains(row[TIME]):
                self._rows.append(row)
                t = microseconds(row[TIME])
                keys.append((t // bin_us * bin_us, *(row[k] for k in spec.keys), row[spec.distinct_column]))
        self.keys = key_frame(keys, spec)

    def rows(self, records: list[int]) -> Iterator[Row]:
        return (self._rows[i] for i in records)


def _typed_row(raw_line: bytes, number: int, request: ReadRequest, where: str) -> Row | None:
    """One line as the plain path reads it (None for a blank line)."""
    return typed_json_line(raw_line.decode("utf-8"), number, request, where)


def _columnar_keys(data: bytes, spec: CandidateSpec, window: tuple[int, int]) -> pl.DataFrame | None:
    """The KeyedBlock.keys of one block (record = line), or None when it must be read row by row."""
    import polars as pl

    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    schema = dict.fromkeys((TIME, *spec.keys, spec.distinct_column), pl.String)
    try:
        frame = pl.read_ndjson(io.BytesIO(data), schema=schema)
    except pl.exceptions.PolarsError:
        return None
    if frame.height != lines or any(frame[column].null_count() for column in (TIME, *spec.keys)):
        return None  # blank lines, or a key missing or null: the plain code decides (and reports)
    if frame[spec.distinct_column].null_count() and data.count(b'"' + spec.distinct_column.encode() + b'"') != lines:
        return None  # a null port is fine, a missing one is an error the plain code reports
    # Scalar work once per distinct value: a block holds ~20k rows but only ~2k distinct timestamps
    # (second precision) and a few hundred ports; the results are joined back to the rows.
    time, port = pl.col(TIME), pl.col(spec.distinct_column)
    fraction = time.str.extract(r"\.([0-9]+)Z$", 1).str.pad_end(6, "0").str.slice(0, 6).cast(pl.Int64).fill_null(0)
    seconds = time.str.slice(0, 19).str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False).cast(pl.Int64)
    times = frame.select(time.unique()).select(
        time, time.str.contains(_CANONICAL_TIME).alias("_time_ok"), (seconds + fraction).alias("_t")
    )
    if not times["_time_ok"].all() or times["_t"].null_count():
        return None
    ports = frame.select(port.unique()).select(
        port,
        (port.is_null() | port.is_in(["", "-"]) | port.str.contains(_PLAIN_PORT)).alias("_port_ok"),
        pl.when(port.str.contains(_PLAIN_PORT)).then(port).otherwise(None).cast(pl.Int64).alias("_port"),
    )
    if not ports["_port_ok"].all():
        return None
    typed = (
        frame.join(times.select(TIME, "_t"), on=TIME, how="left", maintain_order="left")
        .join(
            ports.select(spec.distinct_column, "_port"),
            on=spec.distinct_column,
            how="left",
            nulls_equal=True,
            maintain_order="left",
        )
        .select("_t", *spec.keys, pl.col("_port").alias(spec.distinct_column))
    )
    return with_bins(typed, spec, window)


def with_bins(typed: pl.DataFrame, spec: CandidateSpec, window: tuple[int, int]) -> pl.DataFrame:
    """KeyedBlock.keys from a frame with `_t` (epoch microseconds), the keys and the distinct column."""
    import polars as pl

    bin_us = span_microseconds(spec.time_bin)
    t = pl.col("_t")
    return typed.select(
        (t // bin_us * bin_us).alias(BIN),
        group_hash(list(spec.keys)),
        spec.distinct_column,
        ((t >= window[0]) & (t < window[1])).alias("_in_window"),
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_record"),
    )
