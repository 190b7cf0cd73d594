"""KQL built by the Log Analytics source: validated names, escaped literals, exact filters, settings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from detector.config import LogAnalyticsSettings, Settings
from detector.errors import ConfigError
from detector.kql import string_literal
from detector.logic import CandidateSpec, DistinctCount, Threshold
from detector.sources.kql_query import (
    GroupRange,
    candidates_query,
    datetime_literal,
    details_query,
    identifier,
    raw_query,
)
from detector.sources.loganalytics import RequestPacer, _middle_boundary, _time_split
from tests.fakes.loganalytics import LogAnalyticsFake

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


def test_table_injection_is_rejected_by_every_builder() -> None:
    builders: list[Callable[[str], str]] = [
        lambda t: candidates_query(t, DAY, DAY + timedelta(days=1), SPEC),
        lambda t: raw_query(t, DAY, DAY + timedelta(days=1), ["cIP"]),
    ]
    for build in builders:
        with pytest.raises(ValueError, match="not a KQL identifier"):
            build("W3CIISLog | union SecurityEvent")


def logs_settings(env: dict[str, str]) -> LogAnalyticsSettings:
    return Settings.from_env(env, source_required=False).logs


def test_injection_through_table_setting_is_a_config_error_naming_it() -> None:
    env = {"DETECTOR_SOURCE": f"loganalytics:{WS}", "DETECTOR_LOGS_TABLE": 'W3CIISLog | where cIP != "x"'}
    with pytest.raises(ConfigError, match="DETECTOR_LOGS_TABLE") as caught:
        Settings.from_env(env)
    assert caught.value.setting == "DETECTOR_LOGS_TABLE"
    with pytest.raises(ConfigError, match="DETECTOR_LOGS_TABLE"):
        logs_settings(env)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DETECTOR_LOGS_ENDPOINT", "http://api.loganalytics.io", "https://"),
        ("DETECTOR_LOGS_ENDPOINT", "https://x/?q=1", "https://"),
        ("DETECTOR_LOGS_MODE", "fast", "two-step, raw"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "11m", "1s to 10m"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "1.5s", "1s to 10m"),
        ("DETECTOR_LOGS_SERVER_TIMEOUT", "soon", "timespan"),
        ("AZURE_CLIENT_ID", "my-identity", "GUID"),
    ],
)
def test_bad_settings_name_the_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        logs_settings({name: value})
    assert caught.value.setting == name


def test_settings_defaults_and_parsing() -> None:
    assert logs_settings({}) == LogAnalyticsSettings()
    parsed = logs_settings(
        {
            "DETECTOR_LOGS_ENDPOINT": "https://api.loganalytics.us/",
            "DETECTOR_LOGS_MODE": "RAW",
            "DETECTOR_LOGS_TABLE": "IISLogs_CL",
            "DETECTOR_LOGS_SERVER_TIMEOUT": "10m",
            "AZURE_CLIENT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        }
    )
    assert parsed == LogAnalyticsSettings(
        "https://api.loganalytics.us", "raw", "IISLogs_CL", timedelta(minutes=10), "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    )
    settings = Settings.from_env({"DETECTOR_SOURCE": f"loganalytics:{WS}", "DETECTOR_LOGS_MODE": "raw"})
    assert settings.logs.mode == "raw"


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
