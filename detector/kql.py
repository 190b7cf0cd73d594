"""KQL scalar and aggregate semantics the rules need, in pure Python.

Each function documents the KQL behaviour it reproduces and where that behaviour is undocumented, which
reading we chose. Sources: reference/kql-and-sentinel.md §2 (Kusto docs) and §7 (pitfalls).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from detector.errors import shown

_TIMESPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|m|s|ms)\s*$")
_TIMESPAN_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# .NET Int64.TryParse with NumberStyles.Integer: optional surrounding whitespace, optional sign, ASCII
# digits only. Python's int() would also accept "1_000" and non-ASCII digits, which Kusto rejects.
_LONG = re.compile(r"^[ \t\r\n]*([+-]?[0-9]+)[ \t\r\n]*$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Escapes Kusto documents for "..." literals (scalar-data-types/string): the quote, the backslash, tab,
# newline, return. Other control characters have no documented escape, so such values are built from
# code points instead of being pasted into the query text.
_LITERAL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'[\\"\n\r\t]')
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A run of consecutive %XX escapes (ASCII hex digits only, as .NET HexConverter.FromChar accepts).
_ESCAPE_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")  # how errors="surrogateescape" marks a byte it rejected


def string_literal(value: str) -> str:
    """A KQL expression that evaluates to exactly `value`, whatever it holds: how any text reaches a query."""
    if _CONTROL.search(value):
        return f"unicode_codepoints_to_string(dynamic([{', '.join(str(ord(c)) for c in value)}]))"
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _LITERAL_ESCAPES[m.group(0)], value) + '"'


def parse_timespan(text: str) -> timedelta:
    """Parse a KQL timespan literal such as 10m, 1d, 2h, 30s, 500ms (what rule files and settings use)."""
    match = _TIMESPAN.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a timespan; write it as KQL does, e.g. 10m, 1h, 1d")
    try:
        return timedelta(seconds=float(match.group(1)) * _TIMESPAN_UNITS[match.group(2)])
    except OverflowError:
        raise ValueError(f"'{text}' is too long a timespan") from None


def format_timespan(span: timedelta) -> str:
    """Render a timedelta as the shortest KQL timespan literal (1d, 10m, 90s, 1500ms), exactly.

    A span of whole seconds is written in the largest unit that divides it, any other in milliseconds,
    with the microseconds as a decimal fraction (1.5ms) when there are some (time bins are whole
    milliseconds: bin_parameter).
    """
    micros = span // timedelta(microseconds=1)
    if micros % 1_000_000:
        whole, fraction = divmod(abs(micros), 1000)
        text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".")
        return f"{'-' if micros < 0 else ''}{text}ms"
    seconds = micros // 1_000_000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_datetime(text: str) -> datetime:
    """Parse an ISO 8601 datetime as Kusto prints them; no offset means UTC. Result is tz-aware UTC.

    Kusto keeps 100 ns ticks; Python keeps microseconds, so the 7th fractional digit is dropped
    (truncated, like the Log Analytics SDK does). Truncation never moves a value across a bin or window
    edge, because those are whole microseconds.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{shown(text)}' is not an ISO 8601 datetime such as 2026-11-26T00:00:00Z") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset: the UTC instant is outside datetime's range
        raise ValueError(f"'{shown(text)}' is out of range once converted to UTC") from None


def format_datetime(value: datetime) -> str:
    """Render a UTC datetime the way Kusto does: 2026-11-26T00:10:00Z (fraction only when non-zero)."""
    value = value.astimezone(UTC)
    if value.microsecond:
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def tostring(value: Any) -> str:
    """KQL tostring(): null is "", bools print as true/false, everything else its text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    return str(value)


def strcat(*parts: Any) -> str:
    """KQL strcat(): every argument converted with tostring(), so a missing part is "" and never null."""
    return "".join(tostring(part) for part in parts)


def plain_int(text: str, digits: int = 18) -> int | None:
    """`text` as a whole number when it is 1 to `digits` ASCII digits and nothing else, else None.

    str.isdigit() alone also takes "²" and "١٢" (which int() then refuses or reads), and any length
    (int() refuses 4,300 digits or more): input and settings go through this instead.
    """
    return int(text) if 0 < len(text) <= digits and text.isascii() and text.isdigit() else None


def tolong(value: Any) -> int | None:
    """KQL tolong(): a signed 64-bit integer, or null when conversion fails.

    Strings follow .NET Int64.TryParse (whitespace around, one sign, ASCII digits, in range);
    "-", "", "1.5", "0x1f", "1_000" and out-of-range values are null. Whole reals are truncated.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        truncated = int(value)
        return truncated if _INT64_MIN <= truncated <= _INT64_MAX else None
    if isinstance(value, str):
        match = _LONG.match(value)
        if not match:
            return None
        text = match.group(1)
        digits = text.lstrip("+-").lstrip("0") or "0"
        if len(digits) > 19:
            return None  # out of range (and int() refuses 4,300 digits or more)
        number = -int(digits) if text.startswith("-") else int(digits)
        return number if _INT64_MIN <= number <= _INT64_MAX else None
    return None


def tohex(value: int | None) -> str:
    """KQL tohex() of a long: lower-case, no 0x, no padding, negatives as 64-bit two's complement.

    A null input gives null, which in a string column is "".
    """
    if value is None:
        return ""
    return format(value & 0xFFFFFFFFFFFFFFFF, "x")


def url_decode(value: str) -> str:
    """KQL url_decode(): .NET Uri.UnescapeDataString, as Kusto's reference emulators implement it.

    Kusto documents only the happy path. Microsoft's BabyKusto emulator and KustoLoco both return
    `string.IsNullOrEmpty(url) ? "" : Uri.UnescapeDataString(url)`, whose rules (dotnet/runtime
    UriHelper.UnescapeString and PercentEncodingHelper) are:
    - '+' is not a space; only %XX escapes are decoded, and every one of them, '%25' included;
    - a '%' not followed by two hex digits ("%zz", a trailing "%", "%4") stays as written;
    - escapes of bytes >= 0x80 are decoded as UTF-8, each maximal ill-formed subsequence (overlong
      forms, encoded surrogates, truncated or stray bytes) staying as its original %XX text;
    - characters that are not escapes, lone surrogates included, are copied unchanged.
    It never raises. .NET's legacy %uXXXX form is not an escape here either.
    """
    if "%" not in value:
        return value
    return _ESCAPE_RUN.sub(_decode_escape_run, value)


def _decode_escape_run(match: re.Match[str]) -> str:
    run = match.group(0)
    data = bytes.fromhex(run.replace("%", ""))
    # Python's UTF-8 decoder and .NET's Rune.DecodeFromUtf8 both reject exactly the maximal ill-formed
    # subsequences of Unicode 3.9; surrogateescape marks each rejected byte so it can be put back as
    # the text it was written as (keeping the case of its hex digits).
    decoded = data.decode("utf-8", errors="surrogateescape")
    if not _UNDECODED_BYTE.search(decoded):
        return decoded
    parts: list[str] = []
    position = 0  # byte offset into `data`; the escape of byte i is run[3 * i : 3 * i + 3]
    for char in decoded:
        if "\udc80" <= char <= "\udcff":
            parts.append(run[3 * position : 3 * position + 3])
            position += 1
        else:
            parts.append(char)
            position += len(char.encode("utf-8"))
    return "".join(parts)


def bin_datetime(value: datetime, size: timedelta) -> datetime:
    """KQL bin(datetime, size): round down to a whole multiple of size since the epoch (UTC clock aligned)."""
    size_us = _microseconds(size)
    since_epoch = _microseconds(value - EPOCH)
    return EPOCH + timedelta(microseconds=since_epoch - since_epoch % size_us)


def _microseconds(span: timedelta) -> int:
    return (span.days * 86400 + span.seconds) * 1_000_000 + span.microseconds


T = TypeVar("T", bound=Hashable)


class CappedSet(Generic[T]):
    """The set built by KQL make_set(x, cap) / legacy makeset(x) (cap 128).

    Distinct values; nulls and empty strings are skipped. Kusto documents "null values are ignored";
    its string type has no null, and both reference emulators (BabyKusto and KustoLoco,
    MakeSetStringFunctionImpl) add a string only when `!string.IsNullOrEmpty(v)`, so "" is skipped
    like a null while "-" is an ordinary member.

    Which values survive when there are more than `cap` distinct ones is undefined in KQL (the
    emulators keep the first `cap` in scan order). We keep the `cap` smallest, so the result never
    depends on the order rows arrive in (files, raw and two-step Log Analytics reads all agree).
    Memory stays O(cap): the set is trimmed whenever it doubles.
    """

    __slots__ = ("_cap", "_values")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._values: set[T] = set()

    def add(self, value: T | None) -> None:
        """Add one value; None (KQL null) and "" are ignored, as make_set ignores them."""
        if value is None or value == "":
            return
        self._values.add(value)
        if len(self._values) > 2 * self._cap:
            self._trim()

    def _trim(self) -> None:
        self._values = set(sorted(self._values)[: self._cap])  # type: ignore[type-var]

    def values(self) -> list[T]:
        """The surviving distinct values, sorted (KQL leaves the order undefined)."""
        return sorted(self._values)[: self._cap]  # type: ignore[type-var]

    def __len__(self) -> int:
        return min(len(self._values), self._cap)
