"""Kusto's string and term operators, and the few scalar functions the Exchange and user-agent rules use.

Pure Python, in the style of detector/kql.py. Each function says which Kusto behaviour it reproduces and
where that comes from:

- learn.microsoft.com "String operators" (MicrosoftDocs/dataexplorer-docs,
  data-explorer/kusto/query/datatypes-string-operators.md) and the per-operator pages;
- duckdb-kql 1.1.2 (duckdb_kql/translate/functions.py `term_match_sql`), whose term rules were measured
  against Microsoft's Kusto Emulator (the real engine, run locally) by a differential sweep;
- a production measurement in microsoft/finops-toolkit#2220: on a 36.5M-row Kusto table,
  `has "/providers/"` and `contains "/providers/"` returned identical counts;
- the reference emulators (NeilMacMullen/kusto-loco, which holds BabyKusto's code). They are *not* a
  source for `has`: both implement it as a plain case-insensitive substring test
  (KustoLoco.Core/Evaluation/BuiltIns/Operators/ContainsFunction.cs, `HasFunction`), which the docs'
  own example contradicts (`"KustoExplorerQueryRun" has "Explorer"` is false).

Case-insensitive operators compare with the same per-character fold (detector/kql.py's rules for text
are ordinal; Kusto does not document its folding beyond ASCII, and every needle the rules use is ASCII).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import re2  # type: ignore[import-untyped]  # google-re2: the RE2 engine Kusto's regexes are written for

from detector.kql import tostring

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Dotted-quad IPv4 with an optional IP-prefix mask ("192.168.1.1/24"), the only forms the
# ipv4_is_private() page documents. Each part is 1-3 ASCII digits; range is checked after matching.
_IPV4 = re.compile(r"^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?:/([0-9]{1,2}))?$")
# RFC 1918, the three blocks the ipv4_is_private() page lists (127.0.0.1 is documented as false).
_PRIVATE_BLOCKS = tuple(ipaddress.IPv4Network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def fold(text: str) -> str:
    """Per-character simple upper-case mapping: how case-insensitive operators compare text here.

    A character whose upper case is several characters ("ß" is "SS") keeps itself, so the fold never
    changes a string's length and positions in the folded text are positions in the original.
    """
    if text.isascii():
        return text.upper()
    out = []
    for char in text:
        upper = char.upper()
        out.append(upper if len(upper) == 1 else char)
    return "".join(out)


def is_term_char(char: str) -> bool:
    r"""A character that belongs to a Kusto term: a Unicode letter or number (RE2's [\pL\pN]).

    The docs say terms are "maximal sequences of alphanumeric characters" (older revisions: "ASCII
    alphanumeric"); duckdb-kql measured letters and numbers of any script on the emulator. The
    underscore is not a term character: "invalid_client" is the two terms "invalid" and "client".
    """
    return char.isalpha() or char.isnumeric()


def _term_match(source: str, needle: str, *, lead: bool, trail: bool) -> bool:
    """Whether `needle` occurs in `source` (case-insensitively) with term boundaries at its edges.

    The boundary rule, as measured on the Kusto Emulator (duckdb-kql `term_match_sql`): a boundary is
    required at an edge only when the needle's own character at that edge is a term character. So a
    one-term needle must be a whole term, `"/mapi/"` is found wherever that text occurs (its edges are
    delimiters already), `"a b"` needs "a" to start a term and "b" to end one, and a needle with no
    term character at all is a plain substring test ("" is in everything).
    """
    if not needle:
        return True
    need_lead = lead and is_term_char(needle[0])
    need_trail = trail and is_term_char(needle[-1])
    haystack, target = fold(source), fold(needle)
    start = haystack.find(target)
    while start != -1:
        end = start + len(target)
        if (not need_lead or start == 0 or not is_term_char(source[start - 1])) and (
            not need_trail or end == len(source) or not is_term_char(source[end])
        ):
            return True
        start = haystack.find(target, start + 1)
    return False


def has(source: str, needle: str) -> bool:
    """KQL `source has needle`: the needle is a whole term (or run of terms) of source, case-insensitively.

    Documented: `"North America" has "america"` is true, `"North America" !has "amer"` is true, and
    `"KustoExplorerQueryRun" has "Explorer"` is false (datatypes-string-operators.md). A needle with
    delimiters in it is matched as a phrase at term boundaries (see `_term_match`): `has "/mapi/"` is
    true exactly where `contains "/mapi/"` is.
    """
    return _term_match(source, needle, lead=True, trail=True)


def not_has(source: str, needle: str) -> bool:
    """KQL `source !has needle`."""
    return not has(source, needle)


def has_any(source: str, values: Iterable[Any]) -> bool:
    """KQL `source has_any (values)`: `has` for any of the values; false for an empty list.

    Values that are not strings are compared as their text: `scStatus has_any (dynamic([200, 302,
    401]))` asks whether the string column has the term "200", "302" or "401" (duckdb-kql renders a
    literal item as `str(item)`, and a cast to string otherwise; Kusto's tostring() of a long is its
    decimal text). A null item is tostring(null) = "", which `has` finds in everything.
    """
    return any(has(source, tostring(value)) for value in values)


def hasprefix(source: str, prefix: str) -> bool:
    """KQL `source hasprefix prefix`: some term of source starts with prefix, case-insensitively.

    Documented: `"North America" hasprefix "ame"` is true, `!hasprefix "mer"` is true. Only the leading
    boundary is required (measured: `'x-error' hasprefix 'err'` is true, `'err or' hasprefix 'r o'` is
    false), and only when prefix starts with a term character: `hasprefix "/autodiscover/..."` is a
    case-insensitive substring test.
    """
    return _term_match(source, prefix, lead=True, trail=False)


def contains(source: str, needle: str) -> bool:
    """KQL `source contains needle`: case-insensitive substring (`"FabriKam" contains "BRik"` is true)."""
    return fold(needle) in fold(source)


def startswith(source: str, prefix: str) -> bool:
    """KQL `source startswith prefix`: case-insensitive prefix (`"Fabrikam" startswith "fab"` is true)."""
    return fold(source[: len(prefix)]) == fold(prefix) if len(prefix) <= len(source) else False


def not_startswith(source: str, prefix: str) -> bool:
    """KQL `source !startswith prefix` (`"Fabrikam" !startswith "kam"` is true)."""
    return not startswith(source, prefix)


def in_ci(value: str, candidates: Iterable[str]) -> bool:
    """KQL `value in~ (candidates)`: case-insensitive equality with any (`"abc" in~ ("123", "345", "ABC")`)."""
    folded = fold(value)
    return any(folded == fold(candidate) for candidate in candidates)


def not_in_ci(value: str, candidates: Iterable[str]) -> bool:
    """KQL `value !in~ (candidates)` (`"bca" !in~ ("123", "345", "ABC")` is true)."""
    return not in_ci(value, candidates)


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported once, as our ValueError, not on stderr too
    return re2.compile(pattern, options)


def matches_regex(source: str, pattern: str) -> bool:
    r"""KQL `source matches regex pattern`: RE2 finds a match anywhere in source, case-sensitively.

    Kusto's regexes are RE2 (learn.microsoft.com kusto/query/re2), run here by Google's RE2 itself
    (the google-re2 package), not by Python's `re`, whose `$`, `\d`, `\w` and lookarounds differ.
    RE2 works on UTF-8; a lone surrogate (possible in Python text, not in UTF-8) becomes U+FFFD first,
    as .NET's UTF-8 encoder writes it. A pattern RE2 rejects raises ValueError naming it.
    """
    try:
        compiled = _compiled(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"regular expression {pattern!r} is not valid RE2: {reason}") from None
    return compiled.search(_LONE_SURROGATE.sub("\ufffd", source)) is not None


def string_size(source: str) -> int:
    """KQL string_size(): the size in bytes of the string in UTF-8.

    Documented: string_size("hello") is 5, string_size("⒦⒰⒮⒯⒪") is 15. KustoLoco computes
    `Encoding.UTF8.GetBytes(s).Length`, which writes a lone surrogate as U+FFFD (3 bytes); encoding
    it with surrogatepass also takes 3 bytes, so the count agrees.
    """
    return len(source.encode("utf-8", errors="surrogatepass"))


def ipv4_is_private(ip: str) -> bool | None:
    """KQL ipv4_is_private(): true inside 10/8, 172.16/12 or 192.168/16, false outside, null when unparsable.

    Documented: '192.168.1.1/24' and '10.1.2.3/24' are true, '202.1.2.3' and '127.0.0.1' are false,
    and "null: if parsing of the input as IPv4 address string wasn't successful". So an IPv6 address,
    "", "-" and anything else that is not a dotted quad is null, and `ipv4_is_private(cIP) == false`
    drops those rows (null == false is null, which `where` treats as false). With a mask, the whole
    masked range must lie in a private block (undocumented beyond the /24 examples).
    Undocumented and decided here: parts with leading zeros are read as decimal, not octal.
    """
    match = _IPV4.match(ip)
    if not match:
        return None
    parts = [int(part) for part in match.groups()[:4]]
    mask = 32 if match.group(5) is None else int(match.group(5))
    if any(part > 255 for part in parts) or mask > 32:
        return None
    network = ipaddress.IPv4Network(((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3], mask), strict=False)
    return any(network.subnet_of(block) for block in _PRIVATE_BLOCKS)


def min_datetime(values: Iterable[datetime | None]) -> datetime | None:
    """KQL min() over a datetime column: the earliest value, nulls ignored; null when there is none."""
    present = [v for v in values if v is not None]
    return min(present) if present else None


def max_datetime(values: Iterable[datetime | None]) -> datetime | None:
    """KQL max() over a datetime column: the latest value, nulls ignored; null when there is none."""
    present = [v for v in values if v is not None]
    return max(present) if present else None
