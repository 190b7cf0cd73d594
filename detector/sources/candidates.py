"""The pushdown layer every file reader uses: blocks of lines, key frames, the candidate finder, the fallback.

A rule's CandidateSpec (detector.pushdown) says which rows it can use (a filter), how they group (keys and
a time bin) and which groups can fire (a measure and a monotonic threshold). A group whose measure stays
below a pruning threshold on a superset of its rows can never become a finding, so a reader that knows
the candidate groups may return only their admitted rows and the rule's result is unchanged (the rule
still applies its filter and threshold itself).

The readers (file.py for JSON Lines, iis.py for W3C logs) know their format; this module knows none. A
reader cuts its file into blocks of whole lines (`line_blocks`) and turns each block into a KeyedBlock:
a polars frame of key columns per record (`keys_frame` from a columnar parse, or `RowsBlock` from rows
its plain code typed), plus a way back to the full rows of chosen records. `candidate_rows` runs the
finder over the blocks and takes the candidates' rows; `read_with_pushdown` is the one fallback: when
the columnar read cannot guarantee the plain read's exact rows (`Unavailable`, a polars error) the plain
read runs instead, which gives the same result, only slower.

Key frames: `bin` (Int64, epoch microseconds of the bin start; the window start for a whole-window
spec), `_group` (UInt64, a hash of the key values), `_value` (the DistinctCount column; absent for
Count), `_in_window` (Boolean), `_keep` (Boolean: in the window and admitted by the filter) and
`_record` (UInt32, the record's index in the block).

Groups are identified by a 64-bit hash of their key values (`group_hash`) rather than by the strings:
grouping and joining integers is several times cheaper. Exactness does not depend on the hash being
collision-free: two groups sharing a hash are measured together, which can only raise a count or a
distinct count, so every group that reaches the threshold is still a candidate; a colliding group's
rows merely come along too, and the rule, which applies the threshold itself on the real keys, drops them.

Memory follows the work in flight: bins are finished and freed as time moves on (about two bins of
tuples for time-ordered logs); when a row arrives for a finished bin, the always-exact two-pass
strategy runs instead (the input is parsed once more; each block's kept keys are held, its rows read
again only if it holds candidates).

polars is imported lazily: only a run over a file pays for it, `import function_app` does not.
"""

from __future__ import annotations

import heapq
import importlib.util
import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BufferedIOBase, RawIOBase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import InputError
from detector.kql import EPOCH
from detector.models import Row, Window
from detector.pushdown import TIME, CandidateSpec, DistinctCount, SharedSpec
from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import polars as pl

    from detector.sources import LineReport, ReadRequest

BIN = "bin"  # the name of the bin column (epoch microseconds of the bin start)
GROUP = "_group"  # the name of the group column: group_hash of the key columns (UInt64)
VALUE = "_value"  # the DistinctCount column
KEEP = "_keep"
IN_WINDOW = "_in_window"
RECORD = "_record"
_HASH_SEED = 0x5EED  # any fixed seed: hashes are only compared within one process
# Bins this far behind the newest one are finished. Time-ordered logs (IIS writes them so, Log
# Analytics exports sort them) never go back; logs merged from a few servers may go back a little.
SLACK_BINS = 2
# Finished bins are decided in batches of at least this many waiting tuples (about 8 JSON Lines blocks,
# one IIS block): one polars group-by per batch, while the blocks waiting for it stay few.
FINISH_ROWS = 100_000
DECIDE_ROWS = 100_000  # tuples decided at once by a finder (more are decided in parts)
# Past this many blocks held, the one-pass read has every finder decide what it may, however few tuples
# wait (the port rule alone holds up to 16 JSON Lines blocks in its batches of FINISH_ROWS).
HELD_BLOCKS = 16
# A block typed row by row keeps the typed rows of at most this many taken records until the rule takes
# them (typed once); more are typed again then, so a day whose every row is taken is never held typed.
HOLD_ROWS = 256
COMPACT_ROWS = 250_000  # the two-pass finder drops duplicate tuples once this many more have come
BOM = b"\xef\xbb\xbf"
NO_BIN = -(2**63)  # a block's floor when nothing is known of where later blocks start
PLAIN_INTEGER = r"^[0-9]{1,18}$"  # digits that fit an Int64, as W3C fields and digit strings write them


class Unavailable(Exception):  # noqa: N818 - a signal to fall back, never shown to a user
    """The columnar read cannot guarantee identical results for this input; use the plain read."""


class OutOfOrder(Exception):  # noqa: N818 - a signal between the finder and its caller, not an error
    """A row arrived for a bin that was already finished; the caller re-reads without finishing bins."""


def microseconds(moment: datetime) -> int:
    """Epoch microseconds of a tz-aware datetime (exact integer arithmetic)."""
    span = moment - EPOCH
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


# The extended ISO 8601 forms parse_times types in polars, each read as Python 3.11's fromisoformat reads
# it (checked by experiment, and against parse_datetime by tests/sources/test_times.py): a date (year
# 0001-9999, month 01-12, day 01-31, a day past the month's end refused by polars' strptime), `T` or a
# space, hh:mm (00-23, 00-59), optionally :ss (00-59) and a `.` fraction of 1 to 9 digits (digits past
# the 6th dropped, as fromisoformat drops them), then `Z`, `+hh:mm` or `-hh:mm` (hh 00-23, mm 00-59, so
# always inside the 24 hours fromisoformat allows), or nothing (UTC, as parse_datetime reads it). In
# polars' regex `[0-9]` is ASCII only and `$` is the end of the text (never before a final line break).
# Any other text goes to parse_datetime itself: fromisoformat reads many more (a comma fraction,
# `+hhmm`, an offset with seconds, the basic format, whitespace parse_datetime strips, any character for
# the `T`), and refuses some a looser pattern would take (a leap second, hour 24, `z`).
_EXTENDED_TIME = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]"
    r"(?::[0-5][0-9](?:\.[0-9]{1,9})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
)
_DAY = 86_400_000_000  # microseconds
_FIRST_MICROSECOND = -719_162 * _DAY  # datetime.min (0001-01-01T00:00:00Z) in epoch microseconds
_LAST_MICROSECOND = 2_932_897 * _DAY - 1  # datetime.max (9999-12-31T23:59:59.999999Z)


def vectorised_times(times: pl.Series) -> pl.Series:
    """Epoch microseconds of each text in the _EXTENDED_TIME set (null for any other text).

    The pattern says which texts are in the set; their fields are then read at fixed places (cheaper than
    capture groups): the date at 0, hh at 11, mm at 14, ss at 17 and the fraction at 20, when the text
    without its zone (`Z`: 1 character, an offset: 6) is long enough to hold them. Outside the set the
    slices read garbage (non-strict casts), which the pattern masks. Built in stages (a select each):
    polars evaluates a subexpression once per use within one expression, which cost three times as much;
    and a stage reads only the fields some text has (most blocks hold one form).
    """
    import polars as pl

    canonical = _canonical_times(times)
    if canonical is not None:
        return canonical
    time = pl.col(TIME)

    def number(offset: int, length: int = 2) -> pl.Expr:
        return time.str.slice(offset, length).str.to_integer(strict=False)

    shapes = (
        times.rename(TIME)
        .to_frame()
        .select(
            time,
            # Python's datetime has no year 0 (polars reads it): left to parse_datetime, which refuses it.
            (time.str.contains(_EXTENDED_TIME) & ~time.str.starts_with("0000")).alias("extended"),
            time.str.contains("T", literal=True).alias("has_t"),  # in the set, only a separator is a T
            time.str.slice(-6, 1).alias("sign"),
            time.str.ends_with("Z").alias("utc"),
            time.str.len_bytes().cast(pl.Int64).alias("length"),
        )
    )
    sign = pl.col("sign")
    has_offset = (sign == "+") | (sign == "-")
    body = pl.col("length") - pl.when(pl.col("utc")).then(1).when(has_offset).then(6).otherwise(0)
    shapes = shapes.with_columns(body.alias("body"), has_offset.alias("has_offset"))
    body, has_offset, extended = pl.col("body"), pl.col("has_offset"), pl.col("extended")
    seen = shapes.select(
        (extended & ~(pl.col("has_t") & (body >= 19))).any().alias("other_clock"),
        (extended & (body > 20)).any().alias("fraction"),
        (extended & has_offset).any().alias("offset"),
    ).row(0, named=True)
    if seen["other_clock"]:  # a space for the T, or no seconds
        days = time.str.slice(0, 10).str.strptime(pl.Date, "%Y-%m-%d", strict=False).cast(pl.Int64)
        seconds = pl.when(body >= 19).then(number(17) * 1_000_000).otherwise(0)
        fields = [days * _DAY + number(11) * 3_600_000_000 + number(14) * 60_000_000 + seconds]
    else:
        seconds_format = "%Y-%m-%dT%H:%M:%S"
        fields = [time.str.slice(0, 19).str.strptime(pl.Datetime("us"), seconds_format, strict=False).cast(pl.Int64)]
    if seen["fraction"]:
        fraction = time.str.slice(20, (body - 20).clip(0, 6)).str.pad_end(6, "0").str.to_integer(strict=False)
        fields.append(pl.when(body > 20).then(fraction).otherwise(0))
    if seen["offset"]:
        offset = (number(-5) * 60 + number(-2)) * 60_000_000
        fields.append(pl.when(~has_offset).then(0).when(sign == "+").then(-offset).otherwise(offset))
    stamps = shapes.with_columns(field.alias(f"field_{index}") for index, field in enumerate(fields))
    stamp = pl.col("field_0")
    for index in range(1, len(fields)):
        stamp += pl.col(f"field_{index}")  # a null field (a date polars refuses) makes a null stamp
    stamps = stamps.with_columns(stamp.alias("stamp"))
    stamp = pl.col("stamp")
    # An offset can carry year 1 or 9999 out of datetime's range: left to parse_datetime, which refuses it.
    typed = (extended & stamp.is_between(_FIRST_MICROSECOND, _LAST_MICROSECOND)).fill_null(False)
    return stamps.select(pl.when(typed).then(stamp).alias(TIME))[TIME]


# The canonical form, `yyyy-mm-ddThh:mm:ss[.f]Z`, inside _EXTENDED_TIME: what Log Analytics and most
# exporters write, often for every row of a file.
_CANONICAL_TIME = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,9})?Z$"
)


def _canonical_times(times: pl.Series) -> pl.Series | None:
    """vectorised_times of texts all in the canonical form (nulls aside), in two polars calls instead of
    its stages (~3 ms a JSON Lines block instead of ~10); None when some text is in another form.

    The same reading as vectorised_times': the clock by strptime (null for a day past the month's end),
    the fraction's first 6 digits from place 20; no offset can carry a year out of datetime's range."""
    import polars as pl

    time = pl.col(TIME)
    frame = times.rename(TIME).to_frame()
    length = time.str.len_bytes().cast(pl.Int64)
    in_form = time.str.contains(_CANONICAL_TIME) & ~time.str.starts_with("0000")
    canonical, longest = frame.select(in_form.all().alias("canonical"), length.max().alias("longest")).row(0)
    if not canonical or longest is None:
        return None
    if longest == 20:  # no text has a fraction
        stamp = time.str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%SZ", strict=False).cast(pl.Int64)
    else:
        seconds = time.str.slice(0, 19).str.strptime(pl.Datetime("us"), "%Y-%m-%dT%H:%M:%S", strict=False).cast(pl.Int64)
        stamp = seconds + time.str.slice(20, (length - 21).clip(0, 6)).str.pad_end(6, "0").str.to_integer()
    return frame.select(stamp.alias(TIME))[TIME]


def _with_parse_datetime(times: pl.Series, stamps: pl.Series, *, all_or_none: bool) -> pl.Series | None:
    """`stamps` with each value still null typed by parse_datetime, once per distinct text (null where
    it refuses one). With all_or_none: None at the first text it refuses."""
    import polars as pl

    from detector.kql import parse_datetime

    if not stamps.null_count():
        return stamps
    others = times.filter(stamps.is_null() & times.is_not_null()).unique()
    if not others.len():
        return stamps
    texts: list[str] = []
    typed: list[int] = []
    for text in others:
        try:
            typed.append(microseconds(parse_datetime(text)))
        except (ValueError, OverflowError):
            if all_or_none:
                return None
            continue
        texts.append(text)
    if not texts:
        return stamps
    old = pl.Series(texts, dtype=pl.String)
    new = pl.Series(typed, dtype=pl.Int64)
    return stamps.fill_null(times.replace_strict(old, new, default=None, return_dtype=pl.Int64))


def parse_times(times: pl.Series, vectorised: pl.Series | None = None) -> pl.Series:
    """TimeGenerated text as epoch microseconds (Int64), exactly `microseconds(parse_datetime(text))`,
    null where the text is null or parse_datetime refuses it.

    The forms _EXTENDED_TIME describes (the canonical `yyyy-mm-ddThh:mm:ss[.f]Z`, and what Python's
    isoformat() and str() write: `+00:00`, `-08:00`, a space for the `T`, no offset, no seconds) are
    typed in polars, vectorised; any other text by parse_datetime, once per distinct value.
    `vectorised`: vectorised_times(times), when the caller has it already.
    """
    stamps = _with_parse_datetime(times, vectorised_times(times) if vectorised is None else vectorised, all_or_none=False)
    assert stamps is not None  # noqa: S101 - all_or_none=False always returns the Series
    return stamps.rename(times.name)


def typed_times(times: pl.Series, were_strings: Callable[[], bool], vectorised: pl.Series | None = None) -> pl.Series | None:
    """TimeGenerated text as epoch microseconds (`_t`), exactly as coerce_value types it, or None when a
    value needs the plain code (which skips its line or row and says why).

    As parse_times types them, with one more condition: a value outside the _EXTENDED_TIME set is trusted
    only when `were_strings()` says every value was a JSON string (polars renders a JSON number as text,
    which parse_datetime may read, e.g. 20261126; the plain code refuses a number). No rendering of a
    number, boolean, object or array is in the set (it has a `-` at 4 and a `:` at 13), so a block of
    `+00:00` or space-separated times is not asked. `vectorised`: vectorised_times(times), when the caller has it.
    """
    if times.null_count():
        return None
    stamps = vectorised_times(times) if vectorised is None else vectorised
    if stamps.null_count() and not were_strings():
        return None
    typed = _with_parse_datetime(times, stamps, all_or_none=True)
    return None if typed is None or typed.null_count() else typed.rename("_t")


def span_microseconds(span: timedelta) -> int:
    """A timedelta in whole microseconds."""
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


def first_pass_columns(spec: CandidateSpec, request: ReadRequest) -> tuple[str, ...]:
    """The columns a first pass reads, and checks on every line: the description's and those the read
    requires. The plain read skips a line missing a required column, or holding a value of its type it
    cannot read, whether or not the line is a candidate: so must the first pass, or the two would count
    different rows read and lines skipped (a rule that only filters reads few columns of its own)."""
    return tuple(dict.fromkeys((*spec.columns(), *request.required)))


def columnar_applies(spec: CandidateSpec | None) -> bool:
    """The columnar first pass handles string keys, when polars is installed and there is something to push."""
    if isinstance(spec, SharedSpec):
        return all(columnar_applies(part) for part in spec.specs)
    if spec is None or not (spec.prunes or spec.filter is not None):
        return False
    if any(COLUMN_TYPES[key] != "string" for key in spec.pruning_keys):
        return False
    return importlib.util.find_spec("polars") is not None


def read_with_pushdown(fast: Callable[[], Iterator[Row]], plain: Callable[[], Iterator[Row]]) -> Iterator[Row]:
    """The fast read's rows, or the plain read's when the fast one cannot answer exactly.

    `fast` must raise (Unavailable, a polars error, or an error polars cannot hold a value for) before
    returning its iterator, never while it is iterated: rows already handed to the rule cannot be taken back.
    """
    import polars as pl

    try:
        rows = fast()
    except (Unavailable, pl.exceptions.PolarsError, UnicodeError, OverflowError):
        return plain()
    return rows


_MAGIC = (
    (b"\xff\xfe", "UTF-16 (little-endian BOM FF FE); save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 (big-endian BOM FE FF); save it as UTF-8"),
    (b"\x1f\x8b", "a gzip file (magic 1F 8B); decompress it first"),
    (b"PK\x03\x04", "a zip archive (magic PK 03 04); extract it first"),
)


def describe_binary(head: bytes) -> str:
    """What the first bytes of a file say it is, when that is plainly not UTF-8 text ("" otherwise)."""
    for magic, text in _MAGIC:
        if head.startswith(magic):
            return text
    return ""


def skip_bom(handle: BufferedIOBase | RawIOBase) -> int:
    """Position the handle after a UTF-8 BOM, if any; returns the data's start offset."""
    start = len(BOM) if handle.read(len(BOM)) == BOM else 0
    handle.seek(start)
    return start


def line_blocks(handle: BufferedIOBase | RawIOBase, start: int, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(offset, data) blocks of whole lines from `start` (the last may lack its line break), ~block_bytes each.

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
        yield offset, bytes(view[:cut])
        offset += cut


_TAIL = 1 << 16  # bytes read at a time when looking for a block's last line break
_SEEK_LOCK = threading.Lock()


def _pread(fd: int, size: int, offset: int) -> bytes:
    """os.pread where the platform has it (POSIX); elsewhere (Windows, for local runs) a seek and a read
    under one lock, so threads reading the same descriptor never interleave."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)


def line_spans(fd: int, start: int, size: int, block_bytes: int) -> Iterator[tuple[int, int]]:
    """(offset, length) spans of whole lines covering [start, size) of a file, ~block_bytes each (the last
    may lack its line break; a line longer than a block is a span of its own). Only the bytes around each
    cut are read here, so the blocks themselves can be read (read_span) on other threads, in parallel."""
    offset = start
    while offset < size:
        end = offset + block_bytes
        if end >= size:
            yield offset, size - offset
            return
        cut = _last_break(fd, offset, end)
        if cut < 0:
            cut = _next_break(fd, end, size)
        yield offset, cut - offset
        offset = cut


def _last_break(fd: int, low: int, high: int) -> int:
    """The offset after the last LF in [low, high), or -1."""
    while high > low:
        size = min(_TAIL, high - low)
        found = _pread(fd, size, high - size).rfind(b"\n")
        if found >= 0:
            return high - size + found + 1
        high -= size
    return -1


def _next_break(fd: int, position: int, size: int) -> int:
    """The offset after the first LF at or after `position`, or the file's size."""
    while position < size:
        chunk = _pread(fd, _TAIL, position)
        if not chunk:
            break
        found = chunk.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(chunk)
    return size


def read_span(fd: int, offset: int, length: int, where: str) -> bytes:
    """The span's bytes (os.pread: no shared file position, and the GIL is released while it reads)."""
    data = _pread(fd, length, offset)
    while len(data) < length:
        more = _pread(fd, length - len(data), offset + len(data))
        if not more:
            raise InputError(where, "changed while it was read (it is shorter now); run again")
        data += more
    return data


def open_input(path: Path) -> Any:
    """The `file:` input opened for a first pass (binary), or one error naming it and what to check."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(str(path), f"cannot open ({exc.strerror}); check the path after 'file:'") from None


def read_range(path: Path, offset: int, length: int) -> bytes:
    """Bytes of the file read before (a block read again to take its candidates' rows)."""
    try:
        with path.open("rb") as handle:
            return read_span(handle.fileno(), offset, length, str(path))
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror}); give the detector read access") from None


FEW_PIECES = 64  # up to this many pieces of a range (a block's candidate rows) are read alone, at their offsets


def read_pieces(path: Path, offset: int, length: int, pieces: Sequence[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of each (start, end) piece of the file's range [offset, offset + length), start and end
    counted from the range's start: each piece read alone when they are few (FEW_PIECES), else sliced
    from the range read once."""
    if len(pieces) > FEW_PIECES:
        data = read_range(path, offset, length)
        for start, end in pieces:
            yield data[start:end]
        return
    try:
        with path.open("rb") as handle:
            for start, end in pieces:
                yield read_span(handle.fileno(), offset + start, end - start, str(path))
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror}); give the detector read access") from None


def polars_lines(data: bytes, n_rows: int | None = None, *, empty: bool = False) -> pl.Series | None:
    """The block's lines as a String series (each without its LF or CRLF), or None when polars refuses.

    polars, told that a line is one field (separator NUL), cuts the lines in native code, several times
    faster than bytes.split; it refuses a NUL byte (more fields) and invalid UTF-8. An empty line is
    null: with `empty` it stays so, else the series is refused too.
    """
    import polars as pl

    try:
        # The in-memory engine: ~20% less than read_csv's default for an 8 MB block (4.8 ms against 6.0).
        scan = pl.scan_csv(data, separator="\x00", has_header=False, quote_char=None, schema={"line": pl.String}, n_rows=n_rows)
        lines = scan.collect(engine="in-memory")["line"]
    except pl.exceptions.PolarsError:
        return None
    return None if lines.null_count() and not empty else lines


def group_hash(keys: Sequence[pl.Expr | str]) -> pl.Expr:
    """The `_group` column: a 64-bit hash of the key values (String columns or literals, in spec.keys order).

    Every reader computes it with this one expression, so equal keys give equal hashes whether they
    came from a columnar parse or from Python rows (polars hashes values, not how they are stored).
    """
    import polars as pl

    if not keys:
        return pl.lit(0, dtype=pl.UInt64).alias(GROUP)
    return pl.struct(*keys).hash(_HASH_SEED).alias(GROUP)


def _polars_type(column: str) -> Any:
    import polars as pl

    return pl.String if COLUMN_TYPES[column] == "string" else pl.Int64


@dataclass(frozen=True)
class SpecColumns:
    """Where one spec's columns are in a key frame: BIN, GROUP, VALUE, KEEP for a lone spec; suffixed by
    the spec's index for each part of a SharedSpec (whose KEEP is then "kept by any part"). `window`: the
    part's own window (SharedSpec.windows), when it is not the read's."""

    spec: CandidateSpec
    bin: str = BIN
    group: str = GROUP
    value: str = VALUE
    keep: str = KEEP
    window: Window | None = None

    def renamed(self, kept: pl.DataFrame) -> pl.DataFrame:
        """This spec's kept rows of a key frame, with its columns under the lone-spec names."""
        import polars as pl

        if self.keep == KEEP:
            return kept
        names = {self.bin: BIN, self.group: GROUP, self.value: VALUE}
        wanted = [self.bin, self.group, RECORD] + ([self.value] if isinstance(self.spec.measure, DistinctCount) else [])
        return kept.filter(pl.col(self.keep)).select(wanted).rename({k: v for k, v in names.items() if k in wanted})


def spec_columns(spec: CandidateSpec) -> tuple[SpecColumns, ...]:
    """The parts of a description and their key frame columns (one part unless it is a SharedSpec)."""
    if not isinstance(spec, SharedSpec):
        return (SpecColumns(spec),)
    return tuple(
        SpecColumns(part, f"{BIN}_{i}", f"{GROUP}_{i}", f"{VALUE}_{i}", f"{KEEP}_{i}", spec.window_of(i))
        for i, part in enumerate(spec.specs)
    )


def keys_frame(typed: pl.DataFrame, spec: CandidateSpec, window: Window) -> pl.DataFrame:
    """A KeyedBlock.keys frame from a frame typed like rows: `_t` (epoch microseconds) and every column
    spec.columns() names but TimeGenerated (strings "" when missing, integers null), one row per record.
    IN_WINDOW is the read's window; a part with a window of its own keeps, and bins, only its rows."""
    import polars as pl

    t = pl.col("_t")
    low, high = microseconds(window.start), microseconds(window.end)
    in_window = (t >= low) & (t < high)
    columns: list[pl.Expr] = []
    keeps: list[pl.Expr] = []
    for part in spec_columns(spec):
        own_low, in_own = low, in_window
        if part.window is not None:
            own_low, own_high = microseconds(part.window.start), microseconds(part.window.end)
            in_own = in_window & (t >= own_low) & (t < own_high)
        if part.spec.time_bin is None:
            bin_expr = pl.lit(own_low, dtype=pl.Int64)
        else:
            bin_us = span_microseconds(part.spec.time_bin)
            bin_expr = t // bin_us * bin_us
        keep = in_own if part.spec.filter is None else in_own & part.spec.filter.polars_admits()
        columns += [bin_expr.alias(part.bin), group_hash(list(part.spec.pruning_keys)).alias(part.group)]
        if isinstance(part.spec.measure, DistinctCount):
            columns.append(pl.col(part.spec.measure.column).alias(part.value))
        if part.keep != KEEP:
            columns.append(keep.alias(part.keep))
        keeps.append(keep)
    any_keep = keeps[0] if len(keeps) == 1 else pl.any_horizontal(keeps)
    columns += [in_window.alias(IN_WINDOW), any_keep.alias(KEEP), pl.int_range(pl.len(), dtype=pl.UInt32).alias(RECORD)]
    return typed.select(columns)


def rows_frame(rows: Sequence[Row], spec: CandidateSpec, window: Window) -> pl.DataFrame:
    """A KeyedBlock.keys frame from typed rows (record = index in `rows`)."""
    import polars as pl

    wanted = [c for c in spec.columns() if c != TIME]
    schema: dict[str, Any] = {"_t": pl.Int64, **{c: _polars_type(c) for c in wanted}}
    data = [(microseconds(row[TIME]), *(row.get(c) for c in wanted)) for row in rows]
    return keys_frame(pl.DataFrame(data, schema=schema, orient="row"), spec, window)


class KeyedBlock(ABC):
    """One block of a file in the first pass: its key frame, and a way to the full rows of some records.

    `floor`, when set (by time_merged), is a time (epoch microseconds) no later block starts before: the
    one-pass read finishes the bins more than SLACK_BINS below the floor's bin, instead of below the
    newest bin seen.
    """

    keys: pl.DataFrame
    floor: int | None = None
    _kept: pl.DataFrame | None = None
    _read: int | None = None

    def prepare(self) -> None:
        """Work out what the finder asks of the block (its kept records, the rows read); a reader may
        call this on a worker thread, so that the finder's thread does not have to."""
        import polars as pl

        if self._kept is None:
            self._kept = self.keys.filter(pl.col(KEEP))
            self._read = int(self.keys[IN_WINDOW].sum())

    def kept(self) -> pl.DataFrame:
        """The key frame's records to keep (in the window and admitted by the filter)."""
        self.prepare()
        assert self._kept is not None  # noqa: S101 - set by prepare()
        return self._kept

    @property
    def rows_read(self) -> int:
        """Records of the block inside the window (what the source read, before any pushdown)."""
        self.prepare()
        return self._read or 0

    def drop_keys(self) -> None:
        """Free the key frame (the two-pass read keeps its own copy of the kept records' keys); again is
        nothing."""
        self.__dict__.pop("keys", None)
        self._kept = None

    @abstractmethod
    def rows(self, records: list[int]) -> Iterator[Row]:
        """The typed rows of these records (in window), exactly as the reader's plain code reads them."""

    def detach(self) -> None:  # noqa: B027 - most blocks hold nothing more than their keys
        """Free what rows() can get again (bytes, typed rows): the two-pass read holds every block until
        the end, so a held block must cost little more than its kept records' keys."""

    def hold(self, records: list[int]) -> list[int]:
        """Keep only what rows() needs for these records (sorted), until they are taken; returns their
        numbers for rows() from then on. By default the block is detached (its rows are read again)."""
        self.detach()
        return records


class RowsBlock(KeyedBlock):
    """A block its reader typed row by row (odd lines, a block the columnar parse cannot read exactly).

    `again`, when given, types the same rows again (the same list, in the same order), so a detached
    block keeps no rows. Taken (`hold`), it keeps the typed rows of at most HOLD_ROWS records (of any
    number when it cannot type them again).
    """

    def __init__(
        self, rows: list[Row], spec: CandidateSpec, window: Window, again: Callable[[], list[Row]] | None = None
    ) -> None:
        self.window, self.again = window, again
        self._rows: list[Row] | None = self._in_window(rows)
        self._count = len(self._rows)
        self.keys = rows_frame(self._rows, spec, window)

    def _in_window(self, rows: list[Row]) -> list[Row]:
        return [row for row in rows if self.window.contains(row[TIME])]

    def detach(self) -> None:
        if self.again is not None:
            self._rows = None

    def hold(self, records: list[int]) -> list[int]:
        if self._rows is None:
            return records
        if self.again is not None and len(records) > HOLD_ROWS:
            self.detach()  # typed again when taken
            return records
        self._rows = [self._rows[i] for i in records]  # typed once: only the records' rows are kept
        self._count, self.again = len(records), None
        return list(range(len(records)))

    def rows(self, records: list[int]) -> Iterator[Row]:
        rows = self._rows
        if rows is None:
            rows = self._in_window(self.again())  # type: ignore[misc]
            if len(rows) != self._count:
                raise Unavailable  # the input changed since it was first read
        return (rows[i] for i in records)


class CandidateFinder:
    """Accumulates key frames (rows to keep only) and answers which groups meet the threshold.

    With `finish_bins` True, bins more than SLACK_BINS behind the newest bin seen are decided and freed;
    a later row for such a bin raises OutOfOrder (the caller then starts again with finish_bins False,
    which is always exact). A whole-window spec never finishes a bin before the end.
    """

    def __init__(self, spec: CandidateSpec, finish_bins: bool = True) -> None:
        if not spec.prunes or spec.threshold is None:
            raise ValueError("the finder needs a spec whose threshold prunes")
        self.spec = spec
        self.minimum = spec.threshold.minimum
        self.bin_us = span_microseconds(spec.time_bin) if spec.time_bin is not None else None
        self.finish_bins = finish_bins and self.bin_us is not None
        self.distinct = isinstance(spec.measure, DistinctCount)
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._compact_at = 1_000_000
        self._finished_below: int | None = None  # every bin < this is decided
        self._finishable_below: int | None = None  # every bin < this may be decided: no row may come for it
        self._newest_bin: int | None = None
        self._found: list[pl.DataFrame] = []
        self._found_frame: pl.DataFrame | None = None

    @property
    def finished_below(self) -> int:
        """Every bin below this one is decided (no bin is, before the first finish)."""
        return self._finished_below if self._finished_below is not None else -(2**63)

    def found(self) -> pl.DataFrame:
        """Candidate groups of the bins decided so far."""
        import polars as pl

        if self._found_frame is None:
            self._found_frame = pl.concat(self._found) if self._found else _no_groups()
        return self._found_frame

    def add(self, batch: pl.DataFrame, floor: int | None = None) -> None:
        """Add the kept rows of one block's key frame; `floor`: a time no later block starts before
        (None: the newest bin seen is taken for it; NO_BIN: nothing can be finished yet)."""
        import polars as pl

        if self.distinct:
            # No per-batch unique(): nearly every row of a busy log is its own (bin, group, port) tuple.
            # Columns taken as they are (no query for the thread pool the parsers keep busy).
            value = batch.get_column(VALUE)
            batch = pl.DataFrame([batch.get_column(BIN), batch.get_column(GROUP), value])
            if value.null_count():
                batch = batch.filter(pl.col(VALUE).is_not_null())
        else:
            batch = batch.group_by(BIN, GROUP).agg(pl.len().cast(pl.Int64).alias("_n"))
        if batch.is_empty():
            if floor is not None and floor > NO_BIN and self.finish_bins and self.bin_us is not None:
                self._may_finish(floor // self.bin_us * self.bin_us - SLACK_BINS * self.bin_us)
            return
        low, high = batch[BIN].min(), batch[BIN].max()
        if not isinstance(low, int) or not isinstance(high, int):
            raise TypeError("the bin column must be Int64")
        if self._finishable_below is not None and low < self._finishable_below:
            raise OutOfOrder
        self._pending.append(batch)
        self._pending_rows += batch.height
        self._newest_bin = high if self._newest_bin is None else max(self._newest_bin, high)
        if self.finish_bins and self.bin_us is not None and (floor is None or floor > NO_BIN):
            newest = self._newest_bin if floor is None else floor // self.bin_us * self.bin_us
            self._may_finish(newest - SLACK_BINS * self.bin_us)
        elif self._pending_rows > self._compact_at:
            # Unordered input: keep distinct tuples (or per-group counts) so memory follows groups, not rows.
            merged = self._compact(self._pending)
            self._pending, self._pending_rows = [merged], merged.height
            self._compact_at = max(1_000_000, 2 * merged.height)

    def _may_finish(self, below: int) -> None:
        """Bins below `below` may be finished from now on (a later row for one is out of order); they are
        decided once FINISH_ROWS tuples wait, so a busy log pays one decision per many blocks, not per block."""
        if self._finishable_below is None or below > self._finishable_below:
            self._finishable_below = below
        if self._pending_rows >= FINISH_ROWS or not self._pending:
            self._finish(self._finishable_below)

    def finish_waiting(self) -> None:
        """Decide the bins that may be finished now, however few tuples wait (the one-pass read asks when
        it holds many blocks: a rule whose filter admits few rows would otherwise decide nothing until
        the end, and every block holding one of its rows would wait for it)."""
        if self._finishable_below is not None:
            self._finish(self._finishable_below)

    def _compact(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        import polars as pl

        lazy = pl.concat([frame.lazy() for frame in frames])
        if self.distinct:
            return lazy.unique().collect()
        return lazy.group_by(BIN, GROUP).agg(pl.col("_n").sum()).collect()

    def _finish(self, below: int) -> None:
        import polars as pl

        if self._finished_below is not None and below <= self._finished_below:
            return
        if not self._pending:
            self._finished_below = below
            return
        pending = pl.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        done = pending.filter(pl.col(BIN) < below)
        if not done.is_empty():
            decided = self._decide([done])
            if not decided.is_empty():
                self._found.append(decided)
                self._found_frame = None
        rest = pending.filter(pl.col(BIN) >= below)
        self._pending = [rest] if not rest.is_empty() else []
        self._pending_rows = rest.height
        self._finished_below = below

    def _decide(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """The (bin, group) pairs of these tuple frames that meet the threshold. Many tuples are decided
        in parts by group hash (a group's tuples are all in one part), so the decision's own memory
        stays that of DECIDE_ROWS tuples however long the day."""
        import polars as pl

        keys = [BIN, GROUP]
        parts = -(-sum(frame.height for frame in frames) // DECIDE_ROWS) or 1  # ceiling
        found: list[pl.DataFrame] = []
        for part in range(parts):
            lazy = pl.concat([frame.lazy() for frame in frames])
            if parts > 1:
                lazy = lazy.filter(pl.col(GROUP) % parts == part)
            # Distinct values: unique tuples, then a count per group (cheaper than n_unique per group).
            counted = (
                lazy.unique().group_by(keys).agg(pl.len().alias("_measure"))
                if self.distinct
                else lazy.group_by(keys).agg(pl.col("_n").sum().alias("_measure"))
            )
            found.append(counted.filter(pl.col("_measure") >= self.minimum).select(keys).collect())
        return pl.concat(found) if len(found) > 1 else found[0]

    def result(self) -> pl.DataFrame:
        """The candidate groups: columns `bin`, `_group` (one row per group)."""
        import polars as pl

        found = list(self._found)
        if self._pending:
            found.append(self._decide(self._pending))
        if not found:
            return _no_groups()
        return pl.concat(found).unique()


def _no_groups() -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame(schema={BIN: pl.Int64, GROUP: pl.UInt64})


class CandidateRead:
    """The outcome of candidate_rows: the rows to evaluate, typed as they are iterated, and how many rows
    the source read (final once the rows have been iterated: a record whose row the plain code skips is
    found out then)."""

    def __init__(self, taken: _Taken, read: int, where: str) -> None:
        self._taken, self._read, self._where = taken, read, where
        self.rows: Iterator[Row] = self._typed()

    def _typed(self) -> Iterator[Row]:
        import polars as pl

        try:
            yield from self._taken.rows()
        except (Unavailable, UnicodeError, OverflowError, pl.exceptions.PolarsError):
            # What the first pass read is no longer there (rows already went to the rule: no fallback).
            raise InputError(self._where, "changed while it was read; run again") from None

    @property
    def rows_read(self) -> int:
        return self._read - self._taken.lost

    def counted(self, report: LineReport) -> Iterator[Row]:
        """The rows, with the report's rows read set as they are iterated and final after the last."""
        report.rows_read = self.rows_read
        yield from self.rows
        report.rows_read = self.rows_read


def candidate_rows(blocks: Callable[[], Iterator[KeyedBlock]], spec: CandidateSpec, where: str) -> CandidateRead:
    """Rows of candidate groups that the filter admits. `blocks` opens a fresh pass over the input each call.

    A spec that does not prune takes one pass and keeps the admitted rows. Time-ordered input takes one
    pass: blocks are held until their bins are finished, then their candidate rows are taken and the
    block is freed. If a row arrives for a finished bin, a second, always-exact strategy runs: one more
    pass finds every candidate while holding each block's kept keys, then the candidates' rows are
    taken. Every candidate record is known before this returns, so a caller may still fall back when it
    raises; their rows are typed (by the reader's plain code, which raises only what the plain read
    would) as the caller iterates them, block by block, so the rows of a day whose every group is a
    candidate (a scan of every port) are never all held at once. An input that changed after the first
    pass read it, found out while its rows are typed, is an InputError naming `where`.

    A SharedSpec is answered in the same passes: each part has its own finder (or none, when it does not
    prune), and a row is taken when any part takes it.
    """
    parts = spec_columns(spec)
    if not any(part.spec.prunes for part in parts):
        taken = _Taken()
        read = 0
        for block in blocks():
            read += block.rows_read
            taken.add(block, _take_all([block], parts, [None] * len(parts))[0])
        return CandidateRead(taken, read, where)
    first = blocks()
    try:
        taken, read = _one_pass(first, parts)
        ordered = True
    except OutOfOrder:
        ordered = False
    finally:
        close = getattr(first, "close", None)
        if close is not None:
            close()  # the first pass's reader (its threads, file and held blocks) ends before the second starts
        del first
    if not ordered:
        taken, read = _two_pass(blocks(), parts)
    return CandidateRead(taken, read, where)


class _Taken:
    """The candidate records, block by block, and their rows when iterated; `lost` counts the records
    that gave no row (a record whose full row the reader's plain code skips, a malformed detail value,
    was counted as read from its keys, and the plain read does not count a line it skips).

    When its records are added a block keeps only what their rows need (`hold`: where their lines are,
    which are read again then; a block typed row by row keeps those records' rows) and frees its key
    frame. Rows typed when iterated live only until the caller (the rule) has taken them.
    """

    def __init__(self) -> None:
        self._blocks: deque[tuple[KeyedBlock, list[int]]] = deque()
        self.lost = 0

    def add(self, block: KeyedBlock, records: list[int]) -> None:
        if records:
            records = block.hold(records)
            block.drop_keys()
            self._blocks.append((block, records))

    def rows(self) -> Iterator[Row]:
        while self._blocks:
            block, records = self._blocks.popleft()  # freed as soon as its rows are out
            given = 0
            for row in block.rows(records):
                given += 1
                yield row
            self.lost += len(records) - given


def _finders(parts: Sequence[SpecColumns], finish_bins: bool) -> list[CandidateFinder | None]:
    return [CandidateFinder(part.spec, finish_bins) if part.spec.prunes else None for part in parts]


_BLOCK = "_block"  # a block's index among those taken together


def _take_all(
    blocks: Sequence[KeyedBlock], parts: Sequence[SpecColumns], found: Sequence[pl.DataFrame | None]
) -> list[list[int]]:
    """Each block's kept records, sorted: for each part, of its found groups only (all it keeps where
    `found` is None); one join per part for all the blocks, not one per block (a join per block took
    1.7 s of the held-out IIS day: 3,787 joins, 0.45 ms apiece)."""
    import polars as pl

    if not blocks:
        return []
    kept = [block.kept() for block in blocks]
    chosen: list[pl.DataFrame] = []
    for part, groups in zip(parts, found, strict=True):
        if groups is not None and groups.is_empty():
            continue
        own = pl.concat(
            [part.renamed(k).select(BIN, GROUP, RECORD, pl.lit(i, dtype=pl.UInt32).alias(_BLOCK)) for i, k in enumerate(kept)]
        )
        if groups is not None:
            own = own.join(groups, on=[BIN, GROUP], how="semi")
        chosen.append(own.select(_BLOCK, RECORD))
    records: list[list[int]] = [[] for _ in blocks]
    if not chosen:
        return records
    every = chosen[0] if len(chosen) == 1 else pl.concat(chosen).unique()
    if len(blocks) == 1:
        return [every[RECORD].sort().to_list()]
    grouped = every.group_by(_BLOCK).agg(pl.col(RECORD).sort())
    for i, mine in zip(grouped[_BLOCK].to_list(), grouped[RECORD].to_list(), strict=True):
        records[i] = mine
    return records


CELL = "_cell"  # the two-pass read's group key: a 32-bit hash of (bin, group)


def _cell() -> pl.Expr:
    """A 32-bit hash of (bin, group), the two-pass read's key for a group in a bin (4 bytes a record where
    bin and group take 16). Cells sharing it are measured together, which can only raise a measure, and
    their records are taken together; the rule, grouping on the real keys, drops what does not fire (a
    subset of a group below the threshold is below it too)."""
    import polars as pl

    return (pl.struct(BIN, GROUP).hash(_HASH_SEED) // 2**32).cast(pl.UInt32).alias(CELL)


class CellFinder:
    """The two-pass read's finder: the kept records' (cell, value) tuples of every block, compact, then
    the cells whose measure meets the threshold. A DistinctCount of values in [0, 2^32) (ports, status
    codes) packs each tuple into one UInt64; other values are kept beside their cell; a Count keeps a
    count per cell. Duplicate tuples are dropped as they pile up.

    The tuples are kept in CELL_PARTS parts by cell, each compacted (and decided) alone: dropping the
    duplicates of all tuples at once held them twice for a moment, which was the peak of a long day's
    read (the 4M-row response body peaked at 153-158 MB that way, at 144 MB in parts).
    """

    def __init__(self, spec: CandidateSpec) -> None:
        if not spec.prunes or spec.threshold is None:
            raise ValueError("the finder needs a spec whose threshold prunes")
        self.minimum = spec.threshold.minimum
        self.distinct = isinstance(spec.measure, DistinctCount)
        self._parts: list[list[pl.DataFrame]] = [[] for _ in range(CELL_PARTS)]
        self._part_rows = [0] * CELL_PARTS
        self._compact_at = [COMPACT_ROWS // CELL_PARTS] * CELL_PARTS
        self._rows = 0

    def add(self, cells: pl.DataFrame) -> None:
        """Add one block's kept records: CELL and, for a DistinctCount, VALUE."""
        import polars as pl

        if self.distinct:
            batch = cells.select(CELL, VALUE).filter(pl.col(VALUE).is_not_null())
            value = batch[VALUE]
            low, high = (value.min(), value.max()) if batch.height else (0, 0)
            if value.dtype.is_integer() and isinstance(low, int) and isinstance(high, int) and low >= 0 and high < 2**32:
                packed = pl.col(CELL).cast(pl.UInt64) * 2**32 + pl.col(VALUE).cast(pl.UInt64)
                batch = batch.select(packed.alias("_packed"))
        else:
            batch = cells.group_by(CELL).agg(pl.len().cast(pl.UInt32).alias("_n"))
        if batch.is_empty():
            return
        part_of = (_cell_of(batch) % CELL_PARTS).cast(pl.UInt8).alias("_part")
        for key, frame in batch.with_columns(part_of).partition_by("_part", as_dict=True, include_key=False).items():
            part = int(key[0])
            self._parts[part].append(frame)
            self._part_rows[part] += frame.height
            self._rows += frame.height
            if self._part_rows[part] > self._compact_at[part]:
                compacted = [self._compact(kind) for kind in _kinds(self._parts[part])]
                rows = sum(frame.height for frame in compacted)
                self._rows += rows - self._part_rows[part]
                self._parts[part], self._part_rows[part] = compacted, rows
                self._compact_at[part] = rows + COMPACT_ROWS // CELL_PARTS

    def _compact(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        import polars as pl

        lazy = pl.concat([frame.lazy() for frame in frames])
        if "_n" in frames[0].columns:
            return lazy.group_by(CELL).agg(pl.col("_n").sum()).collect()
        return lazy.unique().collect()

    def result(self) -> pl.Series:
        """The cells that meet the threshold (UInt32, distinct). Each part is decided alone, and a part
        of many tuples in smaller parts by cell (a cell's tuples are all in one), so the decision's memory
        is that of DECIDE_ROWS tuples."""
        import polars as pl

        found: list[pl.Series] = []
        for frames_of_part, rows in zip(self._parts, self._part_rows, strict=True):
            pieces = -(-rows // DECIDE_ROWS) or 1  # ceiling
            for piece in range(pieces):
                measured: list[pl.LazyFrame] = []
                for frames in _kinds(frames_of_part):
                    lazy = pl.concat([frame.lazy() for frame in frames])
                    if "_packed" in frames[0].columns:
                        lazy = lazy.select((pl.col("_packed") // 2**32).cast(pl.UInt32).alias(CELL), pl.col("_packed"))
                    if pieces > 1:
                        lazy = lazy.filter(pl.col(CELL) // CELL_PARTS % pieces == piece)
                    if "_n" in frames[0].columns:
                        measured.append(lazy.select(CELL, pl.col("_n").cast(pl.Int64).alias("_m")))
                    else:
                        measured.append(lazy.unique().select(CELL, pl.lit(1, dtype=pl.Int64).alias("_m")))
                if measured:
                    total = pl.concat(measured).group_by(CELL).agg(pl.col("_m").sum())
                    found.append(total.filter(pl.col("_m") >= self.minimum).collect()[CELL])
        return pl.concat(found) if found else pl.Series(CELL, [], dtype=pl.UInt32)


CELL_PARTS = 16  # the two-pass finder's tuples are kept, compacted and decided in this many parts by cell


def _cell_of(batch: pl.DataFrame) -> pl.Expr:
    """The cell of each of a CellFinder frame's rows (a packed tuple holds it in its high 32 bits)."""
    import polars as pl

    return pl.col("_packed") // 2**32 if "_packed" in batch.columns else pl.col(CELL)


def _kinds(frames: list[pl.DataFrame]) -> list[list[pl.DataFrame]]:
    """A CellFinder's frames by layout (packed tuples, cell and value, cell counts)."""
    kinds: dict[tuple[str, ...], list[pl.DataFrame]] = {}
    for frame in frames:
        kinds.setdefault(tuple(frame.columns), []).append(frame)
    return list(kinds.values())


def _two_pass(blocks: Iterator[KeyedBlock], parts: Sequence[SpecColumns]) -> tuple[_Taken, int]:
    """The always-exact strategy for input in any order: every block's kept records go to the finders
    as (cell, value) tuples, and each block is held (detached, with only each part's kept records and
    their cells) until every candidate cell is known; then the candidates' rows are taken. The input is
    parsed once, and memory is a few bytes per record."""
    import polars as pl

    finders = [CellFinder(part.spec) if part.spec.prunes else None for part in parts]
    held: list[tuple[KeyedBlock, list[pl.DataFrame]]] = []
    read = 0
    for block in blocks:
        read += block.rows_read
        kept = block.kept()
        mine: list[pl.DataFrame] = []
        for part, finder in zip(parts, finders, strict=True):
            own = part.renamed(kept)
            if finder is None:
                mine.append(own.select(RECORD))
                continue
            cells = own.select(_cell(), RECORD, *([VALUE] if finder.distinct else []))
            finder.add(cells)
            # Held: each record's cell (4 bytes a record), and the record unless the block keeps every record
            # (records are numbered 0..n-1 in order: the record is the row's index).
            mine.append(cells.select(CELL) if own.height == block.keys.height else cells.select(CELL, RECORD))
        held.append((block, mine))
        block.detach()
        block.drop_keys()
    # The whole cell is held, not a part of it: with its low 16 bits (2 bytes a record) a record shared
    # them with one of ~2,000 candidates' cells 3% of the time, and those rows, of groups that cannot
    # fire, were a third of what the held-out day took (and the rule then dropped).
    found = [None if finder is None else finder.result().unique() for finder in finders]
    taken = _Taken()
    for block, mine in held:
        chosen = [
            (own if RECORD in own.columns else own.with_row_index(RECORD))
            .filter(pl.lit(True) if cells is None else pl.col(CELL).is_in(cells.implode()))[RECORD]
            .cast(pl.UInt32)
            for own, cells in zip(mine, found, strict=True)
            if cells is None or cells.len()
        ]
        if chosen:
            taken.add(block, (chosen[0] if len(chosen) == 1 else pl.concat(chosen).unique().sort()).to_list())
    return taken, read


def _one_pass(blocks: Iterator[KeyedBlock], parts: Sequence[SpecColumns]) -> tuple[_Taken, int]:
    finders = _finders(parts, finish_bins=True)
    # A block is held until every finder has decided the newest bin it holds for that finder's part.
    held: deque[tuple[KeyedBlock, list[int | None]]] = deque()
    taken = _Taken()
    read = 0

    def decided(highs: list[int | None]) -> bool:
        return all(
            finder is None or high is None or high < finder.finished_below for finder, high in zip(finders, highs, strict=True)
        )

    for block in blocks:
        read += block.rows_read
        kept = block.kept()
        highs: list[int | None] = []
        for part, finder in zip(parts, finders, strict=True):
            if finder is None:
                highs.append(None)
                continue
            mine = part.renamed(kept)
            finder.add(mine, block.floor)
            highs.append(mine[BIN].max() if not mine.is_empty() else None)  # type: ignore[arg-type]
        held.append((block, highs))
        if len(held) > HELD_BLOCKS:
            for finder in finders:
                if finder is not None:
                    finder.finish_waiting()
        # Every decided block is taken and freed, not only those before the first undecided one: a
        # quiet site's block may span most of the day, and must not keep the busy sites' blocks behind it.
        if any(decided(waiting) for _, waiting in held):
            found = [None if f is None else f.found() for f in finders]
            ready: list[KeyedBlock] = []
            undecided: deque[tuple[KeyedBlock, list[int | None]]] = deque()
            for waiting_block, waiting in held:
                if decided(waiting):
                    ready.append(waiting_block)
                else:
                    undecided.append((waiting_block, waiting))
            held = undecided
            for ready_block, records in zip(ready, _take_all(ready, parts, found), strict=True):
                taken.add(ready_block, records)
    found = [None if finder is None else finder.result() for finder in finders]
    last = [block for block, _ in held]
    for block, records in zip(last, _take_all(last, parts, found), strict=True):
        taken.add(block, records)
    return taken, read


def time_merged(streams: Sequence[Iterator[KeyedBlock]]) -> Iterator[KeyedBlock]:
    """The blocks of several streams that each run in time order (one day's logs of several web sites),
    merged by time: the block starting earliest comes next, and each block's `floor` says where the
    others stand, so the one-pass read finishes bins as all streams move past them. A stream that goes
    back in time makes the finder raise OutOfOrder (and the caller takes the exact two-pass read), as
    for one stream. One block of each stream is read ahead."""
    heap: list[tuple[int, int, KeyedBlock]] = []

    def push(index: int) -> None:
        block = next(streams[index], None)
        if block is not None:
            heapq.heappush(heap, (_earliest(block.keys), index, block))

    for index in range(len(streams)):
        push(index)
    while heap:
        _, index, block = heapq.heappop(heap)
        push(index)
        # No block after the last one: any bin may be finished (None: below the newest, as for one stream).
        block.floor = heap[0][0] if heap else None
        yield block


def _earliest(keys: pl.DataFrame) -> int:
    """A time no record of the key frame is earlier than: its smallest bin start over every part's bin
    column (a bin starts at or before each of its records), or NO_BIN for an empty frame."""
    import polars as pl

    bins = [name for name in keys.columns if name == BIN or name.startswith(f"{BIN}_")]
    if not keys.height or not bins:
        return NO_BIN
    start = keys.select(pl.min_horizontal(pl.col(bins).min())).item()
    return start if isinstance(start, int) else NO_BIN
