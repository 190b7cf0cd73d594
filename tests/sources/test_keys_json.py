"""msgspec's decode of a JSON Lines block's key columns (detector/sources/keys_json.py) is json.loads'.

Where `decoded_keys` answers, every line is one JSON object json.loads accepts and each column holds what
json.loads reads for it, rendered as polars' parse renders it (a string as itself, an integer as its
digits, null for null or missing); where it cannot promise that, it answers None and the block is polars'
path's. Hypothesis writes blocks of hostile lines: keys twice, escaped keys, lone surrogates, numbers
and booleans where strings belong, NaN, integers past every range, deep nesting, odd whitespace, two
objects on one line, objects across lines, and missing or null columns.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.sources.candidates import polars_lines
from detector.sources.keys_json import MAX_NESTING, decoded_keys

COLUMNS = ("TimeGenerated", "cIP", "sIP", "sPort", "scBytes")
REQUIRED = {"TimeGenerated", "sIP"}
_MISSING = object()

_names = st.sampled_from([*COLUMNS, "csUserAgent", "cip", "sPort ", "x"])
_escaped_names = _names.map(lambda n: "".join(f"\\u{ord(c):04x}" if c in "iP" else c for c in n))
_values = st.one_of(
    st.sampled_from(
        [
            '"2026-11-26T05:00:30Z"',
            '"198.51.100.9"',
            '"443"',
            '""',
            '"-"',
            "443",
            "-1",
            "0",
            "1.0",
            "1e5",
            "1e400",
            "true",
            "null",
            "NaN",
            "-Infinity",
            '"\\ud800"',
            '"\\udc00x"',
            '"\\ud83d\\ude00"',
            '"a\\"b"',
            '"\\u00e9"',
            '"tab\\there"',
            '"x {y} [z]"',
            '"cIP"',
            "[]",
            '{"cIP": "1.2.3.4"}',
            "[1, [2, [3]]]",
            "01",
            "99999999999999999999",
            "18446744073709551616",
            "-9223372036854775809",
            "9" * 5000,
            "1." + "1" * 5000,
            "[" * 990 + "]" * 990,
            "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1),
        ]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=8).map(json.dumps),
    st.integers().map(str),
)
_separators = st.sampled_from([":", " : ", ":\t", ": ", ":\x0c", ":\u00a0"])


@st.composite
def _line(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(st.one_of(_names, _escaped_names), _values), max_size=7))
    separator = draw(_separators)
    body = ", ".join(f'"{name}"{separator}{value}' for name, value in pairs)
    line = "{" + body + "}"
    shape = draw(st.sampled_from(["plain"] * 6 + ["two objects", "split", "spaced", "trailing comma", "array", "cut"]))
    if shape == "two objects":
        line = line + line
    elif shape == "split" and ", " in line:
        line = line.replace(", ", ",\n", 1)  # one object over two lines
    elif shape == "spaced":
        line = " " + line + " "
    elif shape == "trailing comma":
        line = line[:-1] + ",}"
    elif shape == "array":
        line = "[" + line + "]"
    elif shape == "cut":
        line = line[: len(line) // 2]
    return line


def _expected(line: str) -> dict[str, object] | None:
    """json.loads' columns of one line, or None when the line is not one object json accepts."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _rendered(column: str, value: object) -> object:
    """What the decoded frame must hold for json's value, or _MISSING when no frame may be given."""
    if value is None or value is _MISSING:
        return _MISSING if value is _MISSING and column in REQUIRED else None
    if column in ("sPort", "scBytes"):
        if type(value) is int:
            return str(value)
        return value if isinstance(value, str) else _MISSING
    return value if isinstance(value, str) else _MISSING


def _check(data: bytes) -> bool:
    """decoded_keys of the block against json.loads line by line; True when it gave a frame."""
    lines = polars_lines(data)
    if lines is None:
        return False  # a blank line: the columnar read never asks
    frame = decoded_keys(data, lines, COLUMNS, REQUIRED)
    if frame is None:
        return False
    texts = data.decode("utf-8").split("\n")[:-1]
    assert frame.height == len(texts) == lines.len()
    for index, text in enumerate(texts):
        row = _expected(text)
        assert row is not None, text  # a line json refuses was decoded
        for column in COLUMNS:
            want = _rendered(column, row.get(column, _MISSING))
            assert want is not _MISSING, (text, column)  # a value json reads otherwise, or a required one missing
            assert frame[column][index] == want, (text, column)
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(_line(), min_size=1, max_size=6))
def test_a_decoded_block_holds_json_loads_values(lines: list[str]) -> None:
    _check("".join(line + "\n" for line in lines).encode("utf-8"))


@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_keys_twice_escaped_keys_and_nulls_are_decoded_as_json_does(line_break: str) -> None:
    """The lines polars' parse could not read exactly, which msgspec reads as json does: the frame is
    given (so the property above is not met by answering None)."""
    lines = [
        '{"TimeGenerated": "2026-11-26T05:00:30Z", "cIP": "a", "sIP": "b", "sPort": 7, "sPort": 443}',
        '{"TimeGenerated": "2026-11-26T05:00:30Z", "c\\u0049P": "escaped", "sIP": "b", "sPort": "80"}',
        '{"TimeGenerated": "2026-11-26T05:00:30Z", "sIP": null, "scBytes": null, "x": {"cIP": "nested"}}',
        '{"TimeGenerated": "2026-11-26T05:00:30Z", "cIP": "cIP", "sIP": "\\"sPort\\": 1", "sPort": 99999999999999999999}',
    ]
    data = "".join(line + line_break for line in lines).encode("utf-8")
    assert _check(data)
    frame = decoded_keys(data, polars_lines(data), COLUMNS, REQUIRED)  # type: ignore[arg-type]
    assert frame is not None
    assert frame["sPort"].to_list() == ["443", "80", None, "99999999999999999999"]
    assert frame["cIP"].to_list() == ["a", "escaped", None, "cIP"]
    assert frame["sIP"].to_list() == ["b", "b", None, '"sPort": 1']


GOOD = '{"TimeGenerated": "2026-11-26T05:00:30Z", "cIP": "a", "sIP": "b", "sPort": 443}'


@pytest.mark.parametrize(
    "lines",
    [
        # Two objects on one line and one object over two lines: as many values as lines, so the count
        # alone would pass; the lines' shapes (each starts with { and ends with }) do not.
        [GOOD + GOOD, GOOD[:-1] + ",", '"x": 1}'],
        # An integer json will not convert (sys.get_int_max_str_digits), which msgspec reads.
        [GOOD, GOOD.replace("}", ', "x": ' + "9" * (sys.get_int_max_str_digits() + 1) + "}")],
        # Nesting near the depth at which json gives up (its limit depends on the caller's stack).
        [GOOD.replace("}", ', "x": ' + "[" * 980 + "]" * 980 + "}")],
        [GOOD.replace('"sIP": "b", ', "")],  # a required column missing: the plain code skips the line
        [GOOD.replace("443", "NaN")],  # json takes NaN, msgspec does not
        [GOOD.replace('"a"', '"\\ud800"')],  # a lone surrogate: json takes it, msgspec does not
    ],
    ids=["two objects and a split one", "a long integer", "deep nesting", "required missing", "NaN", "lone surrogate"],
)
def test_blocks_msgspec_might_read_otherwise_are_left_to_polars(lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    lines_series = polars_lines(data)
    assert lines_series is not None
    assert decoded_keys(data, lines_series, COLUMNS, REQUIRED) is None
