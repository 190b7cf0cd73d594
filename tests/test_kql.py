"""KQL scalar and aggregate semantics (reference/kql-and-sentinel.md §2, §7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("https%3a%2f%2fwww.bing.com%2f", "https://www.bing.com/"),  # the Kusto docs' example
        ("a+b%20c", "a b c"),  # '+' is a space (HttpUtility.UrlDecode reading)
        ("plus=1%2B1", "plus=1+1"),
        ("x=%zz%4", "x=%zz%4"),  # malformed escapes are kept verbatim
        ("%", "%"),
        ("bad=%E2%82", "bad=\ufffd"),  # invalid UTF-8 becomes U+FFFD
        ("u=%E2%82%AC", "u=€"),
        ("k=caf%C3%A9", "k=café"),
        ("id=%u0041", "id=%u0041"),  # .NET's legacy %uXXXX is not decoded (documented difference)
        ("-", "-"),
        ("", ""),
    ],
)
def test_url_decode(encoded: str, decoded: str) -> None:
    assert url_decode(encoded) == decoded


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
    for text in ("10m", "1d", "2h", "45s"):
        assert format_timespan(parse_timespan(text)) == text


def test_capped_set_ignores_nulls_keeps_dash_and_empty() -> None:
    values: CappedSet[str] = CappedSet(128)
    values.update(["-", "", None, "-", "a"])
    assert values.values() == ["", "-", "a"]
    assert len(values) == 3


def test_capped_set_keeps_the_smallest_values_whatever_the_order() -> None:
    forward: CappedSet[int] = CappedSet(128)
    backward: CappedSet[int] = CappedSet(128)
    forward.update(range(1000))
    backward.update(reversed(range(1000)))
    assert forward.values() == backward.values() == list(range(128))
    assert len(forward) == 128
