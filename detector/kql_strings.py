"""KQL string functions the failed-logon rules use, in pure Python, in the style of detector/kql.py.

Each function documents the KQL behaviour it reproduces and its source (learn.microsoft.com Kusto docs;
where those are silent, the Kusto emulators BabyKusto and KustoLoco and duckdb-kql's measured rules),
and which reading we chose where the behaviour is undocumented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def split(source: str, delimiter: str) -> list[str]:
    """KQL split(source, delimiter): the substrings between delimiters, as a dynamic array.

    Documented examples (split-function): split("aa_bb", "_") is ["aa","bb"], split("", "_") is [""],
    split("a__b", "_") is ["a","","b"], split("aabbcc", "bb") is ["aa","cc"]: empty parts are kept and
    an input without the delimiter is a one-element array. An empty delimiter is undocumented; the rules
    never use one, so it is refused rather than guessed.
    """
    if not delimiter:
        raise ValueError("split() with an empty delimiter is undocumented in KQL")
    return source.split(delimiter)


def array_element(values: Sequence[Any], index: int) -> Any:
    """KQL `arr[index]` on a dynamic array: the element, or null when the index is out of range.

    A negative index counts from the end (`arr[-1]` is the last element, dynamic-object accessors doc).
    Out of range is null, so `tostring(split(x, "@")[1])` is "" for a value without "@".
    """
    position = index + len(values) if index < 0 else index
    if 0 <= position < len(values):
        return values[position]
    return None


def _fold(text: str) -> str:
    """Per-character simple upper-case mapping, the comparison .NET's OrdinalIgnoreCase makes.

    str.upper() applies full case mapping ("ß" becomes "SS"); a character whose upper case is more than
    one character keeps itself, so lengths never change and a prefix stays a prefix.
    """
    out = []
    for char in text:
        upper = char.upper()
        out.append(upper if len(upper) == 1 else char)
    return "".join(out)


def startswith(source: str, prefix: str) -> bool:
    """KQL `source startswith prefix`: case-insensitive prefix test (startswith-operator doc).

    "Fabrikam" startswith "fab" is true. Kusto does not document how it folds case beyond ASCII; we
    compare per character with the simple upper-case mapping (ordinal ignore-case). The rules only ask
    about ASCII prefixes ("MailboxId=", "X-ARR-CACHE-HIT="), where every reading agrees.
    """
    if len(prefix) > len(source):
        return False
    return _fold(source[: len(prefix)]) == _fold(prefix)


def startswith_cs(source: str, prefix: str) -> bool:
    """KQL `source startswith_cs prefix`: case-sensitive prefix test."""
    return source.startswith(prefix)


def indexof(source: str, lookup: str) -> int:
    """KQL indexof(source, lookup): zero-based index of the first occurrence, -1 when absent.

    indexof-function doc: "If lookup isn't found in the source, returns -1". The search is ordinal (exact
    characters); the rule feeds the index straight back into substring() of the same string, so the
    result is the same whatever unit (UTF-16 code units in .NET, code points here) both count in.
    """
    return source.find(lookup)


def substring(source: str, start: int, length: int | None = None) -> str:
    """KQL substring(source, startingIndex [, length]): zero-based, clamped to the string.

    Documented (substring-function): substring("123456", 1) is "23456", ("123456", 2, 2) is "34",
    ("123456", -2, 2) is "56": a negative start counts from the end. Undocumented but measured on the
    Kusto emulator (duckdb-kql's substring notes): a start past the end gives "", an over-long length
    is clamped, a negative length gives "", and a negative start reaching before the beginning gives "".
    """
    if start < 0:
        start += len(source)
        if start < 0:
            return ""
    if length is None:
        return source[start:]
    if length < 0:
        return ""
    return source[start : start + length]
