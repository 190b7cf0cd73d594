"""KQL built by the Log Analytics source: validated names, escaped literals, exact filters."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from detector.kql import string_literal
from detector.logic import CandidateSpec, Count, DistinctCount, FirstPhase, Threshold, column
from detector.sources.kql_query import (
    GroupRange,
    candidates_query,
    datetime_literal,
    details_query,
    first_phase_query,
    identifier,
    raw_query,
    window_total,
)
from detector.sources.loganalytics import RequestPacer, _middle_boundary, _time_split
from tests.fakes.loganalytics import LogAnalyticsFake
from tests.helpers import FILES

DAY = datetime(2026, 11, 26, tzinfo=UTC)
SPEC = CandidateSpec(
    keys=("cIP", "Computer", "sIP"), time_bin=timedelta(minutes=10), measure=DistinctCount("sPort"), threshold=Threshold(">=", 30)
)
WS = "11111111-2222-3333-4444-555555555555"

HOSTILE = [
    "",
    'a"b',
    "back\\slash",
    'end\\"',
    "new\nline",
    "cr\rtab\t",
    "' or 1==1 //",
    '" | take 1 | where "" == "',
    "unicode é ✓ 𝕏",
    "\\n literally",
    "@verbatim",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_string_literal_round_trips_through_kql(value: str) -> None:
    fake = LogAnalyticsFake(WS)
    columns, rows = fake.run(f"print s = {string_literal(value)}, n = 1", None)
    assert [c["name"] for c in columns] == ["s", "n"]
    assert rows == [[value, 1]]


@pytest.mark.parametrize("name", ["W3CIISLog", "IISLogs_CL", "_private", "a" * 255])
def test_identifiers_accepted(name: str) -> None:
    assert identifier(name) == name


@pytest.mark.parametrize(
    "name", ["", "W3CIISLog | take 1", "W3CIISLog;", "1table", "a b", "W3CIISLog\n| where 1==1", "['x']", "a" * 256, "tablé"]
)
def test_identifiers_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="not a KQL identifier"):
        identifier(name)


def test_datetime_literal_is_utc_with_microseconds() -> None:
    assert datetime_literal(DAY + timedelta(microseconds=7)) == "datetime(2026-11-26T00:00:00.000007Z)"
    with pytest.raises(ValueError, match="UTC"):
        datetime_literal(datetime(2026, 11, 26))  # noqa: DTZ001 - the naive datetime is the point
    with pytest.raises(ValueError, match="UTC"):
        datetime_literal(datetime(2026, 11, 26, tzinfo=timezone(timedelta(hours=1))))


def test_candidates_query_is_exact_and_windowed() -> None:
    query = candidates_query("W3CIISLog", DAY, DAY + timedelta(days=1), SPEC)
    assert "dcount" not in query  # an estimate could miss a group
    assert "make_set(sPort, 30)" in query
    assert "where measure >= 30" in query
    assert (
        "TimeGenerated >= datetime(2026-11-26T00:00:00.000000Z) and TimeGenerated < datetime(2026-11-27T00:00:00.000000Z)"
        in query
    )
    assert "bin(TimeGenerated, 10m), cIP, Computer, sIP" in query


def test_details_query_selects_exactly_the_group_ranges() -> None:
    ranges = [
        GroupRange((("cIP", 'x" or "1"=="1'), ("Computer", "w"), ("sIP", "s")), DAY, DAY + timedelta(minutes=10)),
        GroupRange((("cIP", "y"), ("Computer", "w"), ("sIP", "s")), DAY + timedelta(hours=1), DAY + timedelta(hours=2)),
    ]
    query = details_query("W3CIISLog", ranges, ["TimeGenerated", "cIP", "sPort"])
    assert 'cIP == "x\\" or \\"1\\"==\\"1"' in query
    assert "TimeGenerated < datetime(2026-11-26T02:00:00.000000Z)" in query  # the overall range
    assert query.endswith("| project TimeGenerated, cIP, sPort")
    with pytest.raises(ValueError, match="not a KQL identifier"):
        details_query("W3CIISLog", ranges, ["cIP | take 1"])
    with pytest.raises(ValueError, match="at least one"):
        details_query("W3CIISLog", [], ["cIP"])


def _window_fake() -> tuple[LogAnalyticsFake, int]:
    """The fixture day in the fake, and how many of its rows fall in DAY (counted from the file, not by KQL)."""
    fake = LogAnalyticsFake(WS)
    fake.load_jsonl(FILES / "w3ciislog.jsonl")
    lines = (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines()
    moments = [datetime.fromisoformat(json.loads(line)["TimeGenerated"]) for line in lines]
    return fake, sum(DAY <= m < DAY + timedelta(days=1) for m in moments)


def _split_count(columns: list[dict[str, str]], rows: list[list[Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    named = [dict(zip([c["name"] for c in columns], row, strict=True)) for row in rows]
    return [r for r in named if r["total"] is None], [r["total"] for r in named if r["total"] is not None]


FAILED_LOGONS = CandidateSpec(
    filter=column("scStatus").in_("401", "403") & column("csUserName").ne("-"),
    keys=("cIP", "Computer", "sIP"),
    time_bin=timedelta(minutes=1),
    measure=Count(),
    threshold=Threshold(">=", 20),
)


@pytest.mark.parametrize(
    ("spec", "groups"),
    [
        pytest.param(SPEC, 7, id="distinct-ports"),
        pytest.param(
            CandidateSpec(keys=SPEC.keys, time_bin=SPEC.time_bin, measure=SPEC.measure, threshold=Threshold(">=", 10**6)),
            0,
            id="no-group",
        ),
        pytest.param(FAILED_LOGONS, None, id="filtered"),
        pytest.param(CandidateSpec(keys=("cIP",), measure=Count(), threshold=Threshold(">=", 100)), None, id="whole-window"),
    ],
)
def test_candidates_carry_the_windows_row_count(spec: CandidateSpec, groups: int | None) -> None:
    # One row whose `total` counts every row of [start, end): not the groups' rows, not the filter's,
    # and present when no group meets the threshold.
    fake, in_window = _window_fake()
    query = candidates_query("W3CIISLog", DAY, DAY + timedelta(days=1), spec)
    bounds = f"where TimeGenerated >= {datetime_literal(DAY)} and TimeGenerated < {datetime_literal(DAY + timedelta(days=1))}"
    assert query.count(bounds) == 2  # the groups and the count, over the same rows
    found, counts = _split_count(*fake.run(query, "2026-11-26T00:00:00.000Z/2026-11-27T00:00:00.000Z"))
    assert counts == [in_window] == [1333]
    if groups is not None:
        assert len(found) == groups
    assert all(r["rows"] >= 1 for r in found)
    # Two halves count what the whole does.
    noon = DAY + timedelta(hours=12)
    halves = [
        _split_count(*fake.run(candidates_query("W3CIISLog", a, b, spec), None))[1]
        for a, b in ((DAY, noon), (noon, DAY + timedelta(days=1)))
    ]
    assert sum(sum(h) for h in halves) == in_window and all(len(h) == 1 for h in halves)


def test_first_phase_carries_the_windows_row_count() -> None:
    fake, in_window = _window_fake()
    first = FirstPhase("Computer", column("sSiteName").eq_ci("Default Web Site"), timedelta(hours=1))
    query = first_phase_query("W3CIISLog", DAY, DAY + timedelta(days=1), first, ["TimeGenerated", "Computer", "cIP"])
    found, counts = _split_count(*fake.run(query, None))
    assert counts == [in_window]
    assert all(r["Computer"] for r in found)


def test_the_row_count_never_shares_a_column_name() -> None:
    with pytest.raises(ValueError, match="column named 'total'"):
        window_total("W3CIISLog", DAY, DAY + timedelta(days=1), ["cIP", "total"])
    with pytest.raises(ValueError, match="not a KQL identifier"):
        window_total("W3CIISLog | union SecurityEvent", DAY, DAY + timedelta(days=1), ["cIP"])


def test_table_injection_is_rejected_by_every_builder() -> None:
    first = FirstPhase("Computer", column("sSiteName").eq_ci("x"), timedelta(hours=1))
    builders: list[Callable[[str], str]] = [
        lambda t: candidates_query(t, DAY, DAY + timedelta(days=1), SPEC),
        lambda t: raw_query(t, DAY, DAY + timedelta(days=1), ["cIP"]),
        lambda t: first_phase_query(t, DAY, DAY + timedelta(days=1), first, ["TimeGenerated", "Computer"]),
    ]
    for build in builders:
        with pytest.raises(ValueError, match="not a KQL identifier"):
            build("W3CIISLog | union SecurityEvent")


def test_window_cuts_never_split_a_bin_for_candidates() -> None:
    size = timedelta(minutes=10)
    assert _middle_boundary(DAY, DAY + timedelta(days=1), size) == DAY + timedelta(hours=12)
    assert _middle_boundary(DAY, DAY + size, size) is None  # one bin: cannot be cut
    odd = DAY + timedelta(minutes=3)
    assert _middle_boundary(odd, odd + size, size) == DAY + size  # an unaligned window: cut at the inner edge
    # Any cut is fine for rows: inside one bin, the middle; down to a microsecond, then no more.
    assert _time_split(DAY, DAY + size, size) == DAY + timedelta(minutes=5)
    assert _time_split(DAY, DAY + timedelta(microseconds=1), size) is None


def test_pacer_keeps_to_the_request_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = RequestPacer(3, 30.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        pacer.wait()
        now[0] += 1.0
    assert slept == []
    pacer.wait()  # the 4th request in 30 s waits until the 1st leaves the window
    assert slept == [27.0]
    now[0] += 100
    pacer.wait()
    assert slept == [27.0]


def test_fake_intersects_the_timespan_with_the_query_inclusively() -> None:
    fake = LogAnalyticsFake(WS)
    fake.add_rows([{"TimeGenerated": DAY + timedelta(minutes=m), "cIP": "x", "sPort": 80} for m in range(0, 30, 5)])
    _, rows = fake.run("W3CIISLog | count", "2026-11-26T00:05:00.000Z/2026-11-26T00:15:00.000Z")
    assert rows == [[3]]  # 00:05, 00:10 and 00:15: the end instant is included, as the API does
    _, rows = fake.run(
        "W3CIISLog | where TimeGenerated < datetime(2026-11-26T00:15:00Z) | count", "2026-11-26T00:05:00.000Z/PT600.0S"
    )
    assert rows == [[2]]
    _, rows = fake.run("W3CIISLog | count", None)
    assert rows == [[6]]
