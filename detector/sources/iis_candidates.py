"""Candidate pushdown for IIS W3C log files (the fast path of `iis:`).

Files are read in blocks of whole lines, cut further at directive lines (#Fields may change mid-file),
so each run of entries has one layout. polars' CSV reader (native code, space separated, no quoting)
reads only date, time, c-ip, s-ip and s-port of a run; candidates.candidate_rows finds the groups that
can fire and asks for those entries only, which are parsed by W3cLayout.entry, the code of the plain
path. Results are therefore identical to the plain path's.

Exactness guards: a run of entries takes the columnar path only when it is valid UTF-8, every entry has
exactly as many fields as #Fields declares (the space count is exactly entries x (fields - 1) and the
last field is present in every entry), date and time are canonical (yyyy-mm-dd, hh:mm:ss) and s-port is
"-" or plain digits. Any other run is read entry by entry with the plain code (same rows, same errors
with file:line). A file with lone '\\r' line breaks is left to the plain path entirely.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from detector.errors import InputError
from detector.logic import CandidateSpec
from detector.models import Row
from detector.sources.candidates import KeyedBlock, candidate_rows, key_frame, microseconds, span_microseconds
from detector.sources.iis import FIELD_TO_COLUMN, IisLogSource, W3cLayout
from detector.sources.jsonl_candidates import Unavailable, read_blocks, with_bins
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.sources import ReadRequest

_STAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-5][0-9]$"
_PLAIN_PORT = r"^[0-9]{1,18}$"
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
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(str(path), f"cannot open ({exc.strerror})") from None
    layout = W3cLayout.initial(path, request, computer)
    window = (microseconds(request.window.start), microseconds(request.window.end))
    line = 1
    with handle:
        start = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
        handle.seek(start)
        for _, data in read_blocks(handle, start):
            if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
                raise Unavailable  # lone CR line breaks: the plain path's universal newlines decide lines
            position = 0
            while position < len(data):
                if data.startswith(b"#", position):
                    cut = data.find(b"\n", position) + 1 or len(data)
                    text = data[position:cut].decode("utf-8", errors="replace").rstrip("\r\n")
                    layout = layout.directive(text, line)
                    line += 1
                    position = cut
                    continue
                directive = data.find(b"\n#", position)
                cut = len(data) if directive < 0 else directive + 1
                entries = data[position:cut]
                keys = _columnar_keys(entries, layout, spec, window)
                yield _ColumnarRun(keys, entries, line, layout) if keys is not None else _PlainRun(entries, line, layout, spec)
                line += entries.count(b"\n")
                position = cut


class _ColumnarRun(KeyedBlock):
    def __init__(self, keys: pl.DataFrame, data: bytes, first_line: int, layout: W3cLayout) -> None:
        self.keys, self.data, self.first_line, self.layout = keys, data, first_line, layout

    def rows(self, records: list[int]) -> Iterator[Row]:
        lines = self.data.split(b"\n")
        times: dict[str, datetime] = {}
        for index in records:
            text = lines[index].decode("utf-8", errors="replace").rstrip("\r\n")
            row = self.layout.entry(text, self.first_line + index, times)
            if row is not None:
                yield row


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


def _columnar_keys(data: bytes, layout: W3cLayout, spec: CandidateSpec, window: tuple[int, int]) -> pl.DataFrame | None:
    """The KeyedBlock.keys of a run of entries (record = line), or None when it must be read entry by entry."""
    import polars as pl

    fields = layout.fields
    if fields is None or layout.time_index is None:
        return None  # entries before #Fields: the plain code reports them
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if data.count(b" ") != lines * (len(fields) - 1):
        return None
    index_of = dict(layout.plan)
    wanted: dict[str, int] = {"_time": layout.time_index, "_last": len(fields) - 1}
    if layout.date_index is not None:
        wanted["_date"] = layout.date_index
    for column in (*spec.keys, spec.distinct_column):
        index = index_of.get(column)
        if index is not None:
            wanted[column] = index
    # read_csv names columns in file order; map each wanted index to its name in that order.
    by_index: dict[int, list[str]] = {}
    for name, index in wanted.items():
        by_index.setdefault(index, []).append(name)
    indices = sorted(by_index)
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            separator=" ",
            has_header=False,
            quote_char=None,
            schema=dict.fromkeys((f"column_{i + 1}" for i in range(len(fields))), pl.String),
            columns=[f"column_{i + 1}" for i in indices],
        )
    except pl.exceptions.PolarsError:
        return None
    if frame.height != lines or frame[f"column_{len(fields)}"].null_count():
        return None
    expr_of = {name: pl.col(f"column_{index + 1}") for index, names in by_index.items() for name in names}
    date = expr_of["_date"] if "_date" in expr_of else pl.lit(layout.directive_date)
    time = expr_of["_time"]
    has_port = spec.distinct_column in expr_of
    port_expr = (expr_of[spec.distinct_column] if has_port else pl.lit(None, dtype=pl.String)).alias("_port_text")
    keys = {
        key: pl.lit(layout.computer) if key == "Computer" else expr_of[key].fill_null("") if key in expr_of else pl.lit("")
        for key in spec.keys
    }
    # Scalar work once per distinct value (W3C times have second precision; few ports), joined back.
    stamps = frame.select(
        pl.concat_str([date, pl.lit(" "), time]).alias("_stamp"), *(e.alias(k) for k, e in keys.items()), port_expr
    )
    distinct = stamps.select(pl.col("_stamp").unique())
    stamp = pl.col("_stamp")
    typed_stamps = distinct.select(
        stamp,
        stamp.str.contains(_STAMP).alias("_time_ok"),
        stamp.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False).cast(pl.Int64).alias("_t"),
    )
    if not typed_stamps["_time_ok"].all() or typed_stamps["_t"].null_count():
        return None
    port = pl.col("_port_text")
    ports = stamps.select(port.unique()).select(
        port,
        (port.is_null() | port.eq("-") | port.str.contains(_PLAIN_PORT)).alias("_port_ok"),
        pl.when(port.str.contains(_PLAIN_PORT)).then(port).otherwise(None).cast(pl.Int64).alias(spec.distinct_column),
    )
    if not ports["_port_ok"].all() or (has_port and stamps["_port_text"].null_count()):
        return None  # an empty s-port field: the plain code reports it
    typed = (
        stamps.join(typed_stamps.select("_stamp", "_t"), on="_stamp", how="left", maintain_order="left")
        .join(
            ports.select("_port_text", spec.distinct_column), on="_port_text", how="left", nulls_equal=True, maintain_order="left"
        )
        .select("_t", *spec.keys, spec.distinct_column)
    )
    return with_bins(typed, spec, window)
