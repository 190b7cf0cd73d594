"""KQL scalar and aggregate semantics (reference/kql-and-sentinel.md §2, §7)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.kql import (
    CappedSet,
    bin_datetime,
    format_datetime,
    format_timespan,
    parse_datetime,
    parse_timespan,
    strcat,
    tohex,
    tolong,
    tostring,
    url_decode,
)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("401", ".", "2"), "401.2"),
        (("401", ".", ""), "401."),
        (("", ".", ""), "."),
        ((None, ".", None), "."),
        ((401, ".", 2), "401.2"),
        ((True, "-", 1.5), "true-1.5"),
    ],
)
def test_strcat_converts_every_part_and_never_yields_null(parts: tuple[object, ...], expected: str) -> None:
    assert strcat(*parts) == expected


def test_tostring_of_null_is_empty() -> None:
    assert tostring(None) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1909", 1909),
        ("2148074254", 2148074254),
        ("-256", -256),
        ("+7", 7),
        (" 42 ", 42),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
        ("9223372036854775808", None),  # out of range
        ("-", None),
        ("", None),
        ("1.5", None),
        ("0x1f", None),
        ("1_000", None),  # Python int() accepts this; Kusto does not
        ("١٢", None),  # non-ASCII digits: int() accepts them; Kusto does not
        ("12 3", None),
        ("9" * 5000, None),  # beyond int()'s digit limit: still just out of range
        ("0" * 5000 + "7", 7),
        (None, None),
        (5, 5),
        (5.9, 5),
        (float("nan"), None),
        (True, None),
    ],
)
def test_tolong_is_strict_signed_64_bit(text: object, expected: int | None) -> None:
    assert tolong(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (5, "5"),
        (1909, "775"),
        (1326, "52e"),
        (12002, "2ee2"),
        (2148074254, "8009030e"),
        (2148074252, "8009030c"),
        (-256, "ffffffffffffff00"),
        (-1, "ffffffffffffffff"),
        (None, ""),
    ],
)
def test_tohex_is_lower_case_unpadded_twos_complement(value: int | None, expected: str) -> None:
    assert tohex(value) == expected


# url_decode is Uri.UnescapeDataString in both of Kusto's reference emulators:
#   davidnx/baby-kusto-csharp  src/BabyKusto.Core/Evaluation/BuiltIns/ScalarFunctions/UrlDecode.cs
#   (as kept in NeilMacMullen/kusto-loco's history at that path), and
#   NeilMacMullen/kusto-loco   libraries/KustoLoco.Core/Evaluation/BuiltIns/ScalarFunctions/UrlDecodeFunction.cs
# whose behaviour is dotnet/runtime's src/libraries/System.Private.Uri/src/System/UriHelper.cs
# (UnescapeString, UnescapeMode.UnescapeAll) and PercentEncodingHelper.cs.
@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("https%3a%2f%2fwww.bing.com%2f", "https://www.bing.com/"),  # the Kusto docs' example
        ("a+b%20c", "a+b c"),  # '+' is not a space
        ("plus=1%2B1", "plus=1+1"),
        ("x=%zz%4", "x=%zz%4"),  # malformed escapes stay as written
        ("%", "%"),
        ("a%", "a%"),
        ("%4", "%4"),
        ("%%41", "%A"),  # a bad '%' is kept and scanning goes on at the next character
        ("%2541", "%41"),  # %25 is decoded like any other escape, once
        ("%00", "\x00"),
        ("k=caf%C3%A9", "k=café"),
        ("k=caf%c3%a9", "k=café"),  # hex digits in either case
        ("u=%E2%82%AC", "u=€"),
        ("bad=%E2%82", "bad=%E2%82"),  # truncated sequence: kept as its original text
        ("bad=%e2%82", "bad=%e2%82"),  # ...in the case it was written in
        ("%C3A", "%C3A"),  # a lead byte followed by no continuation byte
        ("%C3%41", "%C3A"),  # ...or by an ASCII escape
        ("%C3%C3%A9", "%C3é"),  # ...or by another lead byte, which starts the next character
        ("%C0%AF", "%C0%AF"),  # overlong '/'
        ("%E0%80%AF", "%E0%80%AF"),  # overlong, 3 bytes
        ("%ED%A0%80", "%ED%A0%80"),  # a UTF-16 surrogate encoded as UTF-8 is not UTF-8
        ("%ED%A0%BD%ED%B8%80", "%ED%A0%BD%ED%B8%80"),  # ...nor is a CESU-8 pair
        ("%F4%90%80%80", "%F4%90%80%80"),  # beyond U+10FFFF
        ("id=%u0041", "id=%u0041"),  # .NET's legacy %uXXXX is not an escape
        ("\udc00%41", "\udc00A"),  # a lone surrogate in the input is copied
        ("-", "-"),
        ("", ""),
    ],
)
def test_url_decode_is_uri_unescape_data_string(encoded: str, decoded: str) -> None:
    assert url_decode(encoded) == decoded


# dotnet/runtime src/libraries/System.Private.Uri/tests/FunctionalTests/PercentEncodingHelperTests.cs,
# PercentEncodedAndDecodedUTF8Sequences: Uri.UnescapeDataString(input) == expected, every vector.
_A, _U_UMLAUT, _CJK, _EMOJI = "%41", "%C3%BC", "%E8%AF%B6", "%F0%9F%98%80"
_INVALID, _OVERLONG_2, _OVERLONG_3, _OVERLONG_4 = "%FF", "%C1%81", "%E0%83%BC", "%F0%88%AF%B6"
DOTNET_PERCENT_ENCODING_VECTORS = [
    (_A, "A"),
    (_U_UMLAUT, "ü"),
    (_CJK, "诶"),
    (_EMOJI, "😀"),
    (_A + _A, "AA"),
    (_U_UMLAUT + _U_UMLAUT, "üü"),
    (_CJK + _CJK, "诶诶"),
    (_EMOJI + _EMOJI, "😀😀"),
    (_A + _U_UMLAUT + _A, "AüA"),
    (_U_UMLAUT + _CJK + _U_UMLAUT, "ü诶ü"),
    (_INVALID + _A, _INVALID + "A"),
    (_OVERLONG_2 + _U_UMLAUT, _OVERLONG_2 + "ü"),
    (_OVERLONG_3 + _CJK, _OVERLONG_3 + "诶"),
    (_OVERLONG_4 + _EMOJI, _OVERLONG_4 + "😀"),
    (_INVALID, _INVALID),
    (_INVALID * 2, _INVALID * 2),
    (_INVALID * 3, _INVALID * 3),
    ("%CA" + "%E4%88%B2", "%CA" + "\u4232"),  # 2-byte marker followed by a 3-byte sequence
    ("%F4%80%80%BA" + "%FD%80%80%BA%CD", chr(0x10003A) + "%FD%80%80%BA%CD"),
    ("%E2%80%8E", "\u200e"),  # BIDI char
    ("%E4%88%B2", "\u4232"),
    ("%E2%80%8E" + "%E3%82%AF", "\u200e" + "ク"),
    ("%E2%80%8E" + "%F0%90%90", "\u200e" + "%F0%90%90"),  # BIDI char followed by invalid UTF-8 bytes
    ("%98%C8%D4%F3" + "%D4%A8" + "%7A" + "%CF%DE" + "%41" + "%16", "%98%C8%D4%F3" + "Ԩ" + "z" + "%CF%DE" + "A" + "\x16"),
    ("%C6" + "%F3%BC%A1%B8" + "%B5", "%C6" + chr(0xFC878) + "%B5"),
]


@pytest.mark.parametrize(("encoded", "decoded"), DOTNET_PERCENT_ENCODING_VECTORS)
def test_url_decode_passes_dotnet_percent_encoding_tests(encoded: str, decoded: str) -> None:
    assert url_decode(encoded) == decoded


# An independent model of the same rules, written from Unicode's Table 3-7 (well-formed UTF-8 byte
# sequences) without Python's codec: an escaped lead byte takes the continuation escapes that fit its
# row; a complete sequence becomes its character, anything else is kept as the text it was written as.
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_SECOND_BYTE = {**dict.fromkeys(range(0xC2, 0xE0), (0x80, 0xBF)), 0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}
_SECOND_BYTE.update(dict.fromkeys((*range(0xE1, 0xED), 0xEE, 0xEF, 0xF1, 0xF2, 0xF3), (0x80, 0xBF)))
_SECOND_BYTE.update({0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)})


def _sequence_length(lead: int) -> int:
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def reference_url_decode(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        first = _ESCAPE.match(text, i)
        if first is None:
            out.append(text[i])
            i += 1
            continue
        lead = int(first.group(0)[1:], 16)
        if lead < 0x80:
            out.append(chr(lead))
            i = first.end()
            continue
        taken, end = [lead], first.end()
        if lead in _SECOND_BYTE:
            low, high = _SECOND_BYTE[lead]
            while len(taken) < _sequence_length(lead) and (nxt := _ESCAPE.match(text, end)):
                value = int(nxt.group(0)[1:], 16)
                if not low <= value <= high:
                    break
                taken.append(value)
                end, low, high = nxt.end(), 0x80, 0xBF
        if len(taken) > 1 and len(taken) == _sequence_length(lead):
            code = taken[0] & (0x7F >> len(taken))
            for value in taken[1:]:
                code = code << 6 | value & 0x3F
            out.append(chr(code))
        else:
            out.append(text[i:end])
        i = end
    return "".join(out)


@pytest.mark.parametrize(("encoded", "decoded"), DOTNET_PERCENT_ENCODING_VECTORS)
def test_the_reference_model_passes_the_dotnet_tests_too(encoded: str, decoded: str) -> None:
    assert reference_url_decode(encoded) == decoded


_escaped_bytes = st.integers(0, 255).map(lambda b: f"%{b:02X}") | st.integers(0x80, 0xFF).map(lambda b: f"%{b:02x}")
_url_pieces = st.lists(
    _escaped_bytes
    | st.sampled_from(["%", "%4", "%zz", "%%", "+", "%u0041", "%C3", "%E2%82", "%ED%A0%80", "%F0%90%90"])
    | st.text(max_size=3),
    max_size=24,
)


@given(_url_pieces)
def test_url_decode_agrees_with_the_reference_model(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert url_decode(text) == reference_url_decode(text)


@given(st.text(), st.data())
def test_url_decode_of_any_percent_encoding_round_trips(text: str, data: st.DataObject) -> None:
    """Escape any chosen characters (each UTF-8 byte as %XX, hex in either case): decoding gives the text back."""
    pieces: list[str] = []
    for char in text:
        if char == "%" or (not 0xD800 <= ord(char) <= 0xDFFF and data.draw(st.booleans())):
            upper = data.draw(st.booleans())
            pieces.extend(f"%{b:02X}" if upper else f"%{b:02x}" for b in char.encode("utf-8"))
        else:
            pieces.append(char)
    assert url_decode("".join(pieces)) == text


@given(st.text())
def test_url_decode_never_raises_and_keeps_text_without_escapes(text: str) -> None:
    decoded = url_decode(text)
    assert isinstance(decoded, str)
    assert len(decoded) <= len(text)
    if "%" not in text:
        assert decoded == text


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-11-26T10:09:59.999999Z", "2026-11-26T10:00:00Z"),
        ("2026-11-26T10:10:00Z", "2026-11-26T10:10:00Z"),
        ("2026-11-26T00:00:00Z", "2026-11-26T00:00:00Z"),
        ("2026-11-26T23:59:59Z", "2026-11-26T23:50:00Z"),
        ("1969-12-31T23:55:00Z", "1969-12-31T23:50:00Z"),  # before the epoch still rounds down
    ],
)
def test_bin_rounds_down_to_clock_aligned_10_minutes(moment: str, expected: str) -> None:
    assert format_datetime(bin_datetime(parse_datetime(moment), timedelta(minutes=10))) == expected


def test_parse_datetime_truncates_kusto_ticks_and_normalises_to_utc() -> None:
    assert parse_datetime("2026-11-26T10:00:00.1234567Z") == datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
    assert parse_datetime("2026-11-26T11:00:00+01:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    assert parse_datetime("2026-11-26 10:00:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_datetime("26/11/2026")


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("1d", 86400), ("2h", 7200), ("30s", 30), ("500ms", 0.5)])
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["10", "ten minutes", "-5m", "1w", ""])
def test_parse_timespan_rejects_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="timespan"):
        parse_timespan(text)


def test_format_timespan_round_trips() -> None:
    for text in ("10m", "1d", "2h", "45s", "1500ms", "500ms", "25h", "0s"):
        assert format_timespan(parse_timespan(text)) == text
    # Exact, never cut to whole seconds (a 1.5 s bin written as 1s bins another way on the server).
    assert format_timespan(parse_timespan("1.5s")) == "1500ms"
    for text in ("0.0015s", "1.234567s", "16.6666667m", "1000.000001s"):  # a fraction of a millisecond too
        assert parse_timespan(format_timespan(parse_timespan(text))) == parse_timespan(text), text


def add_all(capped: CappedSet[Any], values: Iterable[Any]) -> None:
    """What an aggregation does: one add per row."""
    for value in values:
        capped.add(value)


def test_capped_set_skips_nulls_and_empty_strings_keeps_dash() -> None:
    # Both emulators add a string only when !string.IsNullOrEmpty(v): davidnx/baby-kusto-csharp
    # src/BabyKusto.Core/Evaluation/BuiltIns/Aggregates/MakeSet.cs (MakeSetStringFunctionImpl, as kept in
    # NeilMacMullen/kusto-loco's history) and NeilMacMullen/kusto-loco
    # libraries/KustoLoco.Core/Evaluation/BuiltIns/Aggregates/MakeSet.cs.
    values: CappedSet[str] = CappedSet(128)
    add_all(values, ["-", "", None, "-", "a", " "])
    assert values.values() == [" ", "-", "a"]
    assert len(values) == 3


def test_capped_set_of_numbers_keeps_zero() -> None:
    ports: CappedSet[int] = CappedSet(128)
    add_all(ports, [0, None, 80, 0])
    assert ports.values() == [0, 80]


def test_empty_strings_do_not_take_a_place_under_the_cap() -> None:
    values: CappedSet[str] = CappedSet(2)
    add_all(values, ["", "b", "", "a", "c"])
    assert values.values() == ["a", "b"]


def test_capped_set_keeps_the_smallest_values_whatever_the_order() -> None:
    forward: CappedSet[int] = CappedSet(128)
    backward: CappedSet[int] = CappedSet(128)
    add_all(forward, range(1000))
    add_all(backward, reversed(range(1000)))
    assert forward.values() == backward.values() == list(range(128))
    assert len(forward) == 128
