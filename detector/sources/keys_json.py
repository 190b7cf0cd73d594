"""A JSON Lines block's key columns decoded by msgspec, exactly as json.loads decodes them, or None.

The columnar first pass (detector/sources/file.py) needs, per line, the values of a few columns. polars'
NDJSON parser builds every line's whole object and differs from json.loads in several ways that each
need a guard (a key written twice, an escaped key, a lone surrogate, a missing key read as null, a number
read as text), and the guards cost nearly half as much again as the parse. msgspec, decoding into a
struct of just those columns, skips the other values while checking them, in about half polars' CPU,
and where it accepts a line its answer is json.loads' (tests/sources/test_keys_json.py checks this with
hypothesis on hostile lines):

- it refuses what RFC 8259 refuses, as json does (trailing commas, leading zeros, control characters in
  strings, bad escapes, other whitespace), and also NaN/Infinity, lone surrogate escapes and invalid
  UTF-8 in a value it decodes, which json takes: such a block is not decoded here (polars' path reads
  it, as before);
- a key written twice: the last value, as json; an escaped key (`"c\\u0049P"`): the name it spells, as
  json; a key missing is UNSET, a key written as null is None, so the two are told apart without
  searching the lines;
- a value of the wrong JSON type (a number where a string column belongs, a fraction or a boolean where
  an integer does) is refused, so every string value was a JSON string;
- two things it takes that json refuses are ruled out before it runs: an integer longer than Python
  converts (`sys.get_int_max_str_digits()`, 4,300 digits: json raises ValueError), and nesting deep
  enough for either to give up (both stop near the recursion limit; a block is decoded here only when
  no line can nest more than MAX_NESTING levels).

`decode_lines` reads a stream of JSON values, not lines: it would read two objects on one line as two
rows and an object spanning two lines as one. So a block is decoded here only when every line (as
polars cut it, without its CR) starts with `{` and ends with `}` and the values equal the lines in
number. A line break cannot be inside a string (msgspec, like json, refuses a raw LF there), so one
inside a value is between two tokens: after a line's last `}` and before the next line's first `{`,
which JSON never allows inside an object or array. So no value spans lines, every line holds at least
one value, and as many values as lines means one a line.

msgspec does not check UTF-8 inside the strings it skips; the block is valid UTF-8 all the same, since
polars_lines, which cut it, refuses invalid UTF-8 (the plain read refuses such a file too).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from detector.w3ciislog import COLUMN_TYPES

if TYPE_CHECKING:
    import msgspec
    import polars as pl

MAX_NESTING = 500  # well below the ~1,000 levels at which json and msgspec both raise RecursionError

_INTEGER_TYPES = ("int", "long")  # coerce_value reads an integer and its digits alike: both are taken
_DECODED_TYPES = ("string", "datetime", *_INTEGER_TYPES)  # a time must be a JSON string; its text is typed later


@lru_cache(maxsize=64)
def _decoder(columns: tuple[str, ...]) -> msgspec.json.Decoder[Any] | None:
    """A decoder of the columns into a struct (its fields f0, f1, ..., renamed to the column names, which
    need not be identifiers), or None when a column's type is not one decoded here."""
    import msgspec  # imported with the first columnar read, as polars is

    if not all(COLUMN_TYPES.get(column) in _DECODED_TYPES for column in columns):
        return None
    text = str | None | msgspec.UnsetType
    integer = int | str | None | msgspec.UnsetType
    fields = [
        (f"f{i}", integer if COLUMN_TYPES[column] in _INTEGER_TYPES else text, msgspec.UNSET) for i, column in enumerate(columns)
    ]
    keys = msgspec.defstruct("Keys", fields, rename={f"f{i}": column for i, column in enumerate(columns)}, gc=False)
    return msgspec.json.Decoder(keys)


def decoded_keys(data: bytes, lines: pl.Series, columns: tuple[str, ...], required: set[str]) -> pl.DataFrame | None:
    """The block's columns as String columns, as polars' read_ndjson would hold them for lines it reads
    as json.loads does (an integer as its digits; null for a key missing or null), or None when the
    block is not one decoded here: a line msgspec refuses or might read otherwise than json.loads (see
    the module's docstring), or a required column (or the time) missing from a line, which the plain
    code decides. `lines`: the block cut into lines by polars_lines (no blank line, CRs dropped)."""
    import msgspec
    import polars as pl

    decoder = _decoder(columns)
    if decoder is None or not lines.len():
        return None
    line = pl.col("line")
    shape = (
        lines.to_frame("line")
        .select(
            whole=(line.str.starts_with("{") & line.str.ends_with("}")).all(),
            longest=line.str.len_bytes().max(),
            # A line nests at most as deep as it has brackets and braces.
            deepest=line.str.count_matches(r"[\[{]").max(),
        )
        .row(0)
    )
    whole, longest, deepest = shape
    if not whole or (deepest or 0) > MAX_NESTING:
        return None
    digits = sys.get_int_max_str_digits()
    if digits and (longest or 0) > digits:
        lengthy = lines.filter(lines.str.len_bytes() > digits)
        if lengthy.str.contains(f"[0-9]{{{digits + 1}}}").any():
            return None  # an integer json refuses to convert
    try:
        rows = decoder.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError, OverflowError):
        return None
    if len(rows) != lines.len():
        return None
    series: list[pl.Series] = []
    for i, column in enumerate(columns):
        values = list(map(attrgetter(f"f{i}"), rows))
        try:
            if COLUMN_TYPES[column] in _INTEGER_TYPES:
                series.append(pl.Series(column, values, dtype=pl.Int64).cast(pl.String))
            else:
                series.append(pl.Series(column, values, dtype=pl.String))
            continue
        except (TypeError, ValueError, OverflowError):
            pass  # a key missing (UNSET), or integers and text together, or an integer past Int64
        if msgspec.UNSET in values:
            if column in required:
                return None  # the plain code skips a line missing it, and says why
            values = [None if value is msgspec.UNSET else value for value in values]
        series.append(pl.Series(column, [str(v) if type(v) is int else v for v in values], dtype=pl.String))
    return pl.DataFrame(series)
