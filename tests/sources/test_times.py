"""parse_times and typed_times: TimeGenerated text typed in polars exactly as the plain code's
parse_datetime types it (Python 3.11's fromisoformat, no offset read as UTC, then converted to UTC),
null (or, for typed_times, None) exactly where parse_datetime refuses a text; the common forms
vectorised, everything else through parse_datetime itself."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from itertools import product
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detector.kql as kql_module
from detector.kql import parse_datetime
from detector.sources.candidates import microseconds, parse_times, typed_times


def _expected(text: str | None) -> int | None:
    """What the plain code makes of a text: its epoch microseconds, or None where it refuses it."""
    if text is None:
        return None
    try:
        return microseconds(parse_datetime(text))
    except (ValueError, OverflowError):
        return None


def _assert_agrees(texts: list[str | None]) -> None:
    got = parse_times(pl.Series("TimeGenerated", texts, dtype=pl.String))
    assert got.dtype == pl.Int64
    assert got.len() == len(texts)
    assert got.name == "TimeGenerated"
    mismatches = [(t, g, e) for t, g, e in zip(texts, got.to_list(), map(_expected, texts), strict=True) if g != e]
    assert not mismatches, mismatches[:10]


@pytest.fixture
def parse_datetime_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts parse_datetime is asked to type (candidates imports it from detector.kql at each call)."""
    calls: list[str] = []

    def spied(text: str) -> datetime:
        calls.append(text)
        return parse_datetime(text)

    monkeypatch.setattr(kql_module, "parse_datetime", spied)
    return calls


# -- generated texts: the pieces of the forms, and hostile variants of each piece ----------------------------

DIGITS = "0123456789"
# Other digits (Arabic-Indic, Devanagari, fullwidth, mathematical), whitespace, separators and letters
# fromisoformat may or may not take in some place.
HOSTILE = "٢२２𝟚 \t\n\u00a0\u3000\x1c\x00TtZzW:+-−.,/_xé"
ANY_PIECE = st.text(alphabet=DIGITS + HOSTILE, max_size=4)


def _mostly(usual: st.SearchStrategy[str], odd: st.SearchStrategy[str] = ANY_PIECE) -> st.SearchStrategy[str]:
    """`usual` nine times in ten, else `odd`: each piece of a text is odd now and then, so whole texts
    are often in the vectorised set and often one piece away from it."""
    return st.integers(0, 9).flatmap(lambda roll: odd if roll == 0 else usual)


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    """Two digits from one below a field's range to one above it, or anything."""
    return _mostly(st.integers(low, high).map("{:02d}".format))


YEARS = _mostly(
    st.one_of(
        st.sampled_from(["0000", "0001", "0002", "1900", "1969", "1970", "2000", "2024", "2026", "9998", "9999"]),
        st.integers(0, 9999).map("{:04d}".format),
    ),
    st.text(alphabet=DIGITS + HOSTILE, max_size=5),
)
FRACTIONS = _mostly(
    st.one_of(st.just(""), st.text(alphabet=DIGITS, min_size=1, max_size=12).map(lambda digits: "." + digits)),
    st.one_of(
        st.just("."),
        st.text(alphabet=DIGITS, min_size=1, max_size=12).map(lambda digits: "," + digits),
        ANY_PIECE.map(lambda piece: "." + piece),
    ),
)
OFFSETS = st.builds(
    lambda sign, hours, minutes, seconds: f"{sign}{hours:02d}:{minutes:02d}{seconds}",
    st.sampled_from(["+", "-"]),
    st.integers(0, 25),
    st.integers(0, 61),
    _mostly(st.just(""), st.sampled_from([":00", ":30", ":59.5", ":00.1234567", ".5"])),
)
ZONES = _mostly(
    st.one_of(st.sampled_from(["", "Z", "+00:00", "-00:00", "+23:59", "-23:59"]), OFFSETS),
    st.one_of(
        st.sampled_from(["z", "+24:00", "-24:00", "+00:60", "+99:99", "+0530", "+05", "UTC", " +01:00", "−01:00"]),
        OFFSETS.map(lambda offset: offset.replace(":", "", 1)),
        ANY_PIECE,
    ),
)
SEPARATORS = _mostly(st.sampled_from(["T", " "]), st.one_of(st.sampled_from(["t", "x", "\t", "", "_", "TT", "  "]), ANY_PIECE))
PADDING = _mostly(st.just(""), st.sampled_from([" ", "\n", "\t", "\u3000", "\x1c", "\x00", "\r\n"]))


@st.composite
def iso_pieces(draw: st.DrawFn) -> str:
    """A text built from the pieces of an extended ISO datetime, each piece sometimes hostile."""
    date = draw(YEARS) + draw(_mostly(st.just("-"))) + draw(_field(0, 13)) + draw(_mostly(st.just("-"))) + draw(_field(0, 32))
    clock = draw(_field(0, 24)) + draw(_mostly(st.just(":"))) + draw(_field(0, 60))
    if draw(st.integers(0, 3)):  # seconds, mostly
        clock += draw(_mostly(st.just(":"))) + draw(_field(0, 60)) + draw(FRACTIONS)
    return draw(PADDING) + date + draw(SEPARATORS) + clock + draw(ZONES) + draw(PADDING)


NAIVE_MIN, NAIVE_MAX = datetime.min, datetime.max  # noqa: DTZ901 - edges for naive datetimes; their zone is drawn apart


@st.composite
def in_the_vectorised_set(draw: st.DrawFn) -> str:
    """A text of the forms parse_times types in polars: any date, `T` or a space, hh:mm[:ss[.f]] with 1
    to 9 fractional digits, then `Z`, an offset or nothing (out of range in UTC near year 1 or 9999)."""
    moment = draw(st.datetimes())
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{draw(st.sampled_from('T '))}"
    text += f"{moment.hour:02d}:{moment.minute:02d}"
    if draw(st.booleans()):
        text += f":{moment.second:02d}"
        if draw(st.booleans()):
            text += "." + draw(st.text(alphabet=DIGITS, min_size=1, max_size=9))
    offset = st.builds("{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59))
    return text + draw(st.one_of(st.sampled_from(["", "Z"]), offset))


@st.composite
def written_by_python(draw: st.DrawFn) -> str:
    """What Python's isoformat() writes, with any offset (seconds and microseconds too), sep and timespec,
    over the whole range of datetime (where an offset takes year 1 or 9999 out of range once in UTC)."""
    offsets: st.SearchStrategy[tzinfo | None] = st.one_of(
        st.none(),
        st.just(UTC),
        st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes))),
        st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)).map(timezone),
    )
    moment = draw(st.datetimes(timezones=offsets))  # from datetime.min to datetime.max
    edges = [None, None, NAIVE_MIN, NAIVE_MIN + timedelta(hours=1), NAIVE_MAX, NAIVE_MAX - timedelta(hours=1)]
    edge = draw(st.sampled_from(edges))
    if edge is not None:
        moment = edge.replace(tzinfo=moment.tzinfo)
    timespec = draw(st.sampled_from(["auto", "hours", "minutes", "seconds", "milliseconds", "microseconds"]))
    return moment.isoformat(sep=draw(st.sampled_from(["T", " "])), timespec=timespec)


@st.composite
def mutated(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A text with one character replaced, inserted or deleted."""
    text = draw(texts)
    if not text:
        return text
    at = draw(st.integers(0, len(text) - 1))
    character = draw(st.sampled_from(DIGITS + HOSTILE))
    how = draw(st.sampled_from(["replace", "insert", "delete"]))
    if how == "replace":
        return text[:at] + character + text[at + 1 :]
    if how == "insert":
        return text[:at] + character + text[at:]
    return text[:at] + text[at + 1 :]


TIME_TEXTS = st.one_of(
    in_the_vectorised_set(),
    mutated(in_the_vectorised_set()),
    iso_pieces(),
    iso_pieces(),
    written_by_python(),
    written_by_python(),
    mutated(iso_pieces()),
    mutated(written_by_python()),
    st.text(max_size=40),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TIME_TEXTS)
def test_parse_times_agrees_with_parse_datetime_on_a_generated_text(text: str) -> None:
    """A Series of one text (parse_times reads only the fields the texts of a Series have)."""
    _assert_agrees([text])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(TIME_TEXTS, st.none()), min_size=1, max_size=12))
def test_parse_times_agrees_with_parse_datetime_on_generated_texts(texts: list[str | None]) -> None:
    """Any texts, in any mix in one Series: each typed as parse_datetime types it, null where it refuses."""
    _assert_agrees(texts)


@st.composite
def canonical(draw: st.DrawFn) -> str:
    """The canonical `yyyy-mm-ddThh:mm:ss[.f]Z` (0 to 9 fractional digits), sometimes a day past the
    month's end (the form's pattern takes day 31 of any month)."""
    moment = draw(st.datetimes())
    day = draw(st.one_of(st.just(moment.day), st.integers(29, 31)))
    fraction = draw(st.one_of(st.just(""), st.text(alphabet=DIGITS, min_size=1, max_size=9).map(lambda digits: "." + digits)))
    return f"{moment.year:04d}-{moment.month:02d}-{day:02d}T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{fraction}Z"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(canonical(), canonical(), canonical(), mutated(canonical()), st.none()), min_size=1, max_size=12))
def test_parse_times_agrees_with_parse_datetime_on_canonical_texts(texts: list[str | None]) -> None:
    """A Series of canonical texts (often all of them, as a Log Analytics export writes them: typed in
    fewer steps), with fractions of any length, days past the month's end, one character off, nulls."""
    _assert_agrees(texts)


# -- fixed edges ------------------------------------------------------------------------------------------

EDGES = [
    # what Python's isoformat() and str() write, and other tools: all vectorised
    "2026-11-26T05:00:00+00:00",
    "2026-11-26 05:00:00+00:00",
    "2026-11-26T05:00:00.863997+00:00",
    "2026-11-26T05:00:00.123+05:30",
    "2026-11-26T05:00:00-08:00",
    "2026-11-26T05:00:00",
    "2026-11-26 05:00:00.5",
    "2026-11-26T05:00",
    "2026-11-26 05:00Z",
    "2026-11-26T05:00-00:00",
    "2026-11-26T05:00:00.1234567Z",
    "2026-11-26T05:00:00.12345678Z",
    "2026-11-26T05:00:00.123456789+01:00",
    "2026-11-26T23:59:59.999999999-23:59",
    "2026-11-26T00:00:00+23:59",
    "2024-02-29T12:00:00Z",
    "2000-02-29T12:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00+00:01",
    # year edges: in range, and out of range once in UTC (parse_datetime refuses those)
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-00:00",
    "0001-01-01T00:00:00+00:01",
    "0001-01-01T00:59:59.999999+01:00",
    "0001-01-01T01:00:00+01:00",
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999999",
    "9999-12-31T23:59:59-00:01",
    "9999-12-31T22:59:59.999999-01:00",
    "9999-12-31T23:00:00-01:00",
    "9999-12-31T00:00:00+23:59",
    "0000-01-01T00:00:00",
    "0000-01-01T00:00:00+01:00",
    "0000-12-31T23:00:00-01:00",
    # dates and clocks fromisoformat refuses
    "2026-02-29T00:00:00Z",
    "1900-02-29T00:00:00",
    "2026-04-31T00:00:00",
    "2026-02-30T00:00:00",
    "2026-13-01T00:00:00",
    "2026-00-01T00:00:00",
    "2026-01-00T00:00:00",
    "2026-01-32T00:00:00",
    "2026-11-26T24:00:00",
    "2026-11-26T23:60:00",
    "2026-11-26T23:59:60",
    "2026-11-26T23:59:60Z",
    # offsets: out of range, with seconds, without a colon, odd minutes
    "2026-11-26T05:00:00+24:00",
    "2026-11-26T05:00:00-24:00",
    "2026-11-26T05:00:00+99:00",
    "2026-11-26T05:00:00+00:60",
    "2026-11-26T05:00:00+00:99",
    "2026-11-26T05:00:00+05:30:15",
    "2026-11-26T05:00:00+05:30:15.5",
    "2026-11-26T05:00:00+01:00:30.1234567",
    "2026-11-26T05:00:00+05:30.5",
    "2026-11-26T05:00:00-23:59:59.999999",
    "2026-11-26T05:00:00+0530",
    "2026-11-26T05:00:00+05",
    "2026-11-26T05:00:00+01:0",
    "2026-11-26T05:00:00+",
    "2026-11-26T05:00:00-",
    "2026-11-26T05:00:00+01:00Z",
    "2026-11-26T05:00:00Z+01:00",
    "2026-11-26T05:00:00−01:00",
    "2026-11-26T05:00:00 +01:00",
    # fractions: none after the dot, a comma, long, after minutes only, other digits
    "2026-11-26T05:00:00.",
    "2026-11-26T05:00:00.Z",
    "2026-11-26T05:00:00,5",
    "2026-11-26T05:00:00,5Z",
    "2026-11-26T05:00:00.1234567891",
    "2026-11-26T05:00:00." + "9" * 30 + "Z",
    "2026-11-26T05:00.5",
    "2026-11-26T05:00:00.12٣",
    # other shapes fromisoformat reads or refuses
    "2026-11-26",
    "2026-11-26T05",
    "2026-11-26T0500",
    "2026-11-26T050000Z",
    "20261126T050000Z",
    "20261126",
    "2026-W48-4T05:00:00",
    "2026W484",
    "2026-330T05:00:00",
    "2026-11-26t05:00:00Z",
    "2026-11-26T05:00:00z",
    "2026-11-26x05:00:00",
    "2026-11-26\t05:00:00",
    "2026-11-26_05:00:00",
    "2026-11-2605:00:00",
    "2026-11-26T5:00:00",
    "2026-1-26T05:00:00",
    "٢٠٢٦-11-26T05:00:00",
    "2026-11-26T05:00:0٢",
    "２０２６-11-26T05:00:00",
    # whitespace parse_datetime strips
    " 2026-11-26T05:00:00Z",
    "2026-11-26T05:00:00Z ",
    "2026-11-26T05:00:00+00:00\n",
    "\t2026-11-26 05:00:00\r\n",
    "\u30002026-11-26T05:00:00\u3000",
    "\x1c2026-11-26T05:00:00",
    "2026-11-26T05:00:00\x00",
    "",
    " ",
    "Z",
    "null",
    "20261126.5",
    "-1",
]


@pytest.mark.parametrize("text", EDGES)
def test_parse_times_agrees_with_parse_datetime_on_an_edge(text: str) -> None:
    """Alone, and next to a vectorised value and a null in the same Series."""
    _assert_agrees([text])
    _assert_agrees(["2026-11-26T05:00:00+00:00", text, None, text])


def test_parse_times_agrees_with_parse_datetime_across_the_edges_of_every_field() -> None:
    """Every combination of edge dates, clocks, separators and zones, in one Series and a Series to a form."""
    dates = [
        "0001-01-01", "0001-01-02", "9999-12-31", "9999-12-30", "1970-01-01", "1969-12-31", "2024-02-29",
        "2023-02-29", "1900-02-29", "2000-02-29", "2026-04-31", "2026-04-30", "2026-13-01", "2026-00-10",
        "2026-01-00", "2026-01-32", "0000-01-01",
    ]  # fmt: skip
    clocks = [
        "00:00", "23:59", "00:00:00", "23:59:59", "23:59:59.999999", "23:59:59.9999999", "23:59:59.999999999",
        "00:00:00.000000001", "12:34:56.1", "12:34:56.12", "24:00", "23:60", "23:59:60", "12:34:56.",
        "12:34:56.1234567890",
    ]  # fmt: skip
    zones = ["", "Z", "+00:00", "-00:00", "+00:01", "-00:01", "+23:59", "-23:59", "+24:00", "+14:00", "-12:00", "+00:60"]
    texts: list[str | None] = [date + sep + clock + zone for date, sep, clock, zone in product(dates, "T ", clocks, zones)]
    _assert_agrees(texts)
    # A Series to a form as well: which fields parse_times reads, and how, depends on the forms it holds.
    for sep, clock, zone in product("T ", clocks, zones):
        _assert_agrees([date + sep + clock + zone for date in dates])


# -- the vectorised path is the one taken -------------------------------------------------------------------

COMMON_FORMS = [
    "2026-11-26T05:00:{s:02d}.{s:06d}+00:00",  # isoformat() of an aware datetime
    "2026-11-26 05:00:{s:02d}.{s:06d}+00:00",  # str() of one
    "2026-11-26 05:00:{s:02d}.{s:06d}",  # str() of a naive one
    "2026-11-26T05:00:{s:02d}+05:30",
    "2026-11-26T05:00:{s:02d}.{s:03d}-08:00",
    "2026-11-26T05:00:{s:02d}-00:00",
    "2026-11-26T05:00:{s:02d}.{s:03d}",
    "2026-11-26T05:{s:02d}",
    "2026-11-26T05:{s:02d}Z",
    "2026-11-26T05:00:{s:02d}.{s:09d}Z",
    "2026-11-26T05:00:{s:02d}.{s:07d}Z",
    "2026-11-26T05:00:{s:02d}Z",
]


@pytest.mark.parametrize("form", COMMON_FORMS)
def test_the_common_forms_are_typed_without_parse_datetime(form: str, parse_datetime_calls: list[str]) -> None:
    texts = [form.format(s=s) for s in range(60)]
    got = parse_times(pl.Series(texts)).to_list()
    assert parse_datetime_calls == []
    assert got == [microseconds(parse_datetime(text)) for text in texts]


def test_other_forms_are_typed_by_parse_datetime_once_per_distinct_value(parse_datetime_calls: list[str]) -> None:
    fallback = ["2026-11-26T05:00:00+0530", "2026-11-26T05:00:00,5Z", " 2026-11-26T05:00:00Z", "20261126T050000Z", "x"]
    texts = ["2026-11-26T05:00:00+00:00", *fallback, *fallback, None]
    got = parse_times(pl.Series(texts, dtype=pl.String)).to_list()
    assert sorted(parse_datetime_calls) == sorted(fallback)
    assert got == [_expected(text) for text in texts]
    assert got[-2] is None and got[1] is not None


# -- typed_times: parse_times for a block, or None when a value needs the plain code --------------------------


def _were_strings(answer: bool, asked: list[int]) -> Callable[[], bool]:
    def were_strings() -> bool:
        asked.append(1)
        return answer

    return were_strings


def test_typed_times_of_times_typed_in_polars_does_not_ask_whether_they_were_strings() -> None:
    """No rendering of a JSON number, boolean, object or array is in the _EXTENDED_TIME set."""
    texts = ["2026-11-26T05:00:00Z", "2026-11-26T05:00:00.1234567Z", "0001-01-01T00:00:00Z", "2026-11-26T05:00:00+00:00"]
    texts += ["2026-11-26 05:00:00Z", "2026-11-26T05:00:00.12345678Z", "2026-11-26T05:00", "2026-11-26 05:00:00.5-08:00"]
    asked: list[int] = []
    got = typed_times(pl.Series(texts), _were_strings(False, asked))
    assert got is not None and got.name == "_t"
    assert got.to_list() == [_expected(text) for text in texts]
    assert asked == []


@pytest.mark.parametrize("other", ["20261126", "2026-11-26T05:00:00,5Z", "2026-W48-4T05:00:00Z", " 2026-11-26T05:00:00Z"])
def test_typed_times_trusts_any_other_form_only_when_every_value_was_a_string(other: str) -> None:
    """20261126 is what polars makes of a JSON number, which parse_datetime reads and the plain code refuses."""
    texts = ["2026-11-26T05:00:00Z", other]
    asked: list[int] = []
    assert typed_times(pl.Series(texts), _were_strings(False, asked)) is None
    assert asked == [1]
    got = typed_times(pl.Series(texts), _were_strings(True, asked))
    assert got is not None
    assert got.to_list() == [_expected(text) for text in texts]


@pytest.mark.parametrize(
    "texts",
    [
        ["2026-11-26T05:00:00Z", None],
        ["2026-11-26T05:00:00Z", "2026-11-26T24:00:00Z"],
        ["2026-11-26T05:00:00+00:00", "2026-13-26T05:00:00Z"],
        ["2026-11-26T05:00:00+00:00", "0001-01-01T00:00:00+00:01"],
        ["2026-11-26T05:00:00+00:00", "2026-11-26T05:00:00z"],
    ],
)
def test_typed_times_is_none_when_a_value_is_null_or_refused(texts: list[str | None]) -> None:
    assert typed_times(pl.Series(texts, dtype=pl.String), lambda: True) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TIME_TEXTS, min_size=1, max_size=8))
def test_typed_times_is_parse_times_or_none_when_any_value_is_refused(texts: list[str]) -> None:
    expected: list[Any] = [_expected(text) for text in texts]
    got = typed_times(pl.Series(texts, dtype=pl.String), lambda: True)
    if None in expected:
        assert got is None
    else:
        assert got is not None
        assert got.to_list() == expected
