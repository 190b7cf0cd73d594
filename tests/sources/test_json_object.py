"""json_object (orjson where its answer is json's) against json.loads through nesting_safe, on any text."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.sources import has_lone_surrogate, json_object, nesting_safe


def _json(text: str) -> tuple[bool, Any]:
    try:
        return True, nesting_safe(json.loads, text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        return False, (type(exc), str(exc))


def _ours(text: str) -> tuple[bool, Any, bool]:
    try:
        value, clean = json_object(text)
    except (ValueError, RecursionError) as exc:
        return False, (type(exc), str(exc)), False
    return True, value, clean


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1, 1.0 and True differ; so do -0.0 and 0.0; NaN is NaN).

    Iterative: the values may be nested ~1,000 deep."""
    pairs = [(a, b)]
    while pairs:
        x, y = pairs.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):
                return False
            pairs.extend((x[k], y[k]) for k in x)
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            pairs.extend(zip(x, y, strict=True))
        elif isinstance(x, float):
            if not ((math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))):
                return False
        elif x != y:
            return False
    return True


def _strings(value: Any) -> list[str]:
    found, todo = [], [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return found


def check(text: str) -> None:
    ours, theirs = _ours(text), _json(text)
    assert ours[0] == theirs[0], (text, ours, theirs)
    assert _same(ours[1], theirs[1]), (text, ours, theirs)
    if ours[2]:
        assert not any(has_lone_surrogate(s) for s in _strings(ours[1])), text


# Pieces JSON texts are made of, including the ones the two parsers read differently.
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=2**63 - 3, max_value=2**64 + 3).map(str),
    st.integers(min_value=-(2**63) - 3, max_value=-(2**63) + 3).map(str),
    st.floats(allow_nan=False).map(repr).filter(lambda s: "inf" not in s),
    st.sampled_from(
        [
            "1E400",
            "-1e400",
            "1e-400",
            "-0",
            "-0.0",
            "0.1e1",
            "1.7976931348623157e309",
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "1.",
            ".5",
            "+1",
            "0x10",
            "1e",
            "2.2250738585072011e-308",
        ]
    ),
)
STRINGS = st.one_of(
    st.text().map(json.dumps),
    st.text().map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.sampled_from(
        [
            '"\\ud800"',
            '"\\udc00\\ud800"',
            '"\\ud83d\\ude00"',
            '"a\\u0000b"',
            '"\\x41"',
            '"\t"',
            '"\\/"',
            '"\ud800"',
            '"\u2028"',
            '"\\uD83D"',
            '"\\u12"',
            '"\\"',
        ]
    ),
)
SCALARS = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false", "null", "True", "nul"]))
SPACE = st.sampled_from(["", " ", "\t", "\r", "\n", "\x0b", "\xa0", "\ufeff"])


def _object(items: list[tuple[str, str]], space: str) -> str:
    return "{" + ",".join(f"{space}{k}{space}:{space}{v}" for k, v in items) + "}"


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.tuples(st.lists(st.tuples(STRINGS, inner), max_size=5), SPACE).map(lambda t: _object(*t)),
    ),
    max_leaves=12,
)
ROWS = st.tuples(
    st.lists(st.tuples(st.one_of(st.sampled_from(['"cIP"', '"sPort"', '"TimeGenerated"']), STRINGS), VALUES), max_size=8),
    SPACE,
).map(lambda t: _object(*t))


@settings(max_examples=600, deadline=None)
@given(st.tuples(SPACE, st.one_of(ROWS, VALUES), SPACE, st.sampled_from(["", "", "x", ",", "}", "{}"])))
def test_any_text_gets_jsons_value_or_jsons_error(parts: tuple[str, str, str, str]) -> None:
    check("".join(parts))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('{}[]":,0123456789-+.eE \\utrfalsn\ud800\x00'), max_size=40))
def test_any_jumble_of_json_characters(text: str) -> None:
    check(text)


def test_where_orjson_and_json_read_accepted_text_differently_json_decides() -> None:
    for text in (
        '{"sPort": 18446744073709551616}',  # orjson: a float
        '{"sPort": -9223372036854775809}',
        '{"a": 18446744073709551615, "b": -9223372036854775808}',  # in range: orjson's answer is json's
        '{"a": ' + "[" * 995 + "]" * 995 + "}",  # json: too deep (from its stack); orjson reads it
        '{"a": ' + "[" * 1030 + "]" * 1030 + "}",  # both refuse
        '{"a": ' + "[" * 500 + "]" * 500 + "}",  # both read it
        '{"a": NaN}',
        '{"a": 1E400}',
        '{"a": "\\ud800"}',  # json keeps the lone surrogate (typed makes it U+FFFD); orjson refuses it
        '{"a": 1, "a": 2}',
        '{"a": 1.5, "b": 2e3}',
        "[1, 2]",
        '"text"',
        "\ufeff{}",
    ):
        check(text)
    assert json_object('{"a": 1, "b": "x", "c": null, "d": true}') == ({"a": 1, "b": "x", "c": None, "d": True}, True)
    assert json_object('{"a": "\\ud800"}') == ({"a": "\ud800"}, False)  # from json: looked at by typed
    assert json_object('{"a": 18446744073709551616}') == ({"a": 18446744073709551616}, False)


@pytest.mark.parametrize("depth", [995, 1000, 1020])
def test_a_duplicate_key_cannot_hide_nesting_json_refuses(depth: int) -> None:
    """orjson takes 1,024 levels, json ~990: behind a duplicate key, orjson's answer is a plain object."""
    text = '{"a":' + "[" * depth + "]" * depth + ',"a":1}'
    with pytest.raises(RecursionError):
        nesting_safe(json.loads, text)
    with pytest.raises(RecursionError):
        json_object(text)
