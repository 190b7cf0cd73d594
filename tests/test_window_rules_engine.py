"""The three rules without a time bin, run by the engine from every source into the sinks.

User agents (f845881e: whole-window groups, `< 100`), ProxyShell (968358d6: row-level, 12h) and Silk
Typhoon (23005e87: row-level, 1d steps read over 14 days, two phases). The Exchange fixture
(tests/files/generate_exchange.py) is read as JSON Lines, as IIS logs written by the same generator, and
from the fake Log Analytics workspace; each source's findings must be the rule's findings over every row
of the step's query period. Then windows, ids, the late-data re-check and the `< 100` decision.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.config import LogAnalyticsSettings, Settings
from detector.evaluate import evaluate
from detector.kql import parse_datetime
from detector.logic.anomalous_user_agent import AnomalousUserAgent
from detector.logic.silk_typhoon import TABLE_COLUMNS, SilkTyphoon
from detector.models import Finding, Row, Window
from detector.rules import Rule, load_rules
from detector.runner import evaluate_window, run_incremental
from detector.sinks import Sink
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource
from detector.sources.loganalytics import LogAnalyticsSource, RequestPacer
from detector.state.file import FileStateStore
from detector.w3ciislog import coerce_row
from detector.windows import evaluation_period, plan_windows, read_windows
from tests.fakes import tls
from tests.fakes.loganalytics import LogAnalyticsFake, serve_log_analytics
from tests.fakes.server import FakeServer
from tests.helpers import FILES

FIXTURE = FILES / "exchange_w3ciislog.jsonl"
END = parse_datetime("2026-11-27T00:00:00Z")
WS = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
IDS = {
    "agents": "f845881e-2500-44dc-8ed7-b372af3e1e25",
    "proxyshell": "968358d6-6af8-49bb-aaa4-187b3067fb95",
    "silk": "23005e87-2d3a-482b-b03d-edbebd1ae151",
}
RULES: dict[str, Rule] = {name: load_rules(rule_id)[0] for name, rule_id in IDS.items()}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_exchange", FILES / "generate_exchange.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
RAW = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]


def typed(raw: list[dict[str, Any]]) -> list[Row]:
    return [coerce_row(item, TABLE_COLUMNS, ("TimeGenerated",), f"row {i}") for i, item in enumerate(raw)]


ROWS = typed(RAW)


def step(rule: Rule) -> Window:
    """The last step of the fixture: the window a scheduled run at END evaluates."""
    return Window(END - rule.query_frequency, END)


def oracle(rule: Rule, rows: Sequence[Row], window: Window) -> list[dict[str, Any]]:
    """The rule's findings over every row of each query period the window's steps read."""
    found = []
    for read in read_windows(window, rule.logic.time_bin, rule.query_period, rule.logic.whole_window):
        found += evaluate(rule, rows, read)
    return [f.to_json() for f in found]


def as_json(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [f.to_json() for f in findings]


# -- windows ------------------------------------------------------------------------------------------


def test_the_rules_step_by_their_query_frequency_and_read_their_query_period() -> None:
    silk, proxyshell, agents = RULES["silk"], RULES["proxyshell"], RULES["agents"]
    assert (silk.logic.time_bin, silk.query_period) == (timedelta(days=1), timedelta(days=14))
    assert read_windows(step(silk), silk.logic.time_bin, silk.query_period, True) == [Window(END - timedelta(days=14), END)]
    assert proxyshell.logic.time_bin == timedelta(hours=12)
    assert agents.logic.time_bin == timedelta(days=1)
    # A catch-up of three days: three steps, each with its own 14-day read, never overlapping, no gap.
    three = Window(END - timedelta(days=3), END)
    reads = read_windows(three, silk.logic.time_bin, silk.query_period, True)
    assert [r.end for r in reads] == [END - timedelta(days=2), END - timedelta(days=1), END]
    assert all(r.end - r.start == timedelta(days=14) for r in reads)
    # An explicit window that is not whole steps is the query over that range, once.
    hour = Window(END - timedelta(hours=1), END)
    assert read_windows(hour, silk.logic.time_bin, silk.query_period, True) == [hour]
    # A binned rule reads its window as it is.
    assert read_windows(three, timedelta(minutes=10), timedelta(days=1), False) == [three]


@pytest.mark.parametrize("name", sorted(RULES))
def test_planned_windows_are_whole_contiguous_steps_and_a_first_run_is_one_step(name: str) -> None:
    rule = RULES[name]
    size, period = rule.logic.time_bin, evaluation_period(rule.logic.time_bin, rule.query_period, True)
    now = END + timedelta(hours=5)
    first = plan_windows(None, now, timedelta(minutes=10), size, period, timedelta(days=2))
    assert [(w.start, w.end) for w in first.windows] == [(END - size, END)]
    later = plan_windows(END - 3 * size, now, timedelta(minutes=10), size, period, timedelta(days=7))
    assert all(w.end - w.start == size for w in later.windows)
    assert all(a.end == b.start for a, b in zip(later.windows, later.windows[1:], strict=False))
    assert later.windows[0].start == END - 3 * size and later.windows[-1].end == END


# -- every source ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_file_source_gives_the_rules_findings_over_every_row(name: str) -> None:
    rule = RULES[name]
    found = as_json(evaluate_window(rule, FileSource(FIXTURE), step(rule)).findings)
    assert found, "the fixture plants results in the last step"
    assert found == oracle(rule, ROWS, step(rule))


@pytest.fixture(scope="module")
def iis_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders: dict[str, Path] = GENERATOR.write_iis(RAW, tmp_path_factory.mktemp("iis"))
    return folders


def _site_as_logged(rule: Rule) -> Rule:
    """Silk Typhoon with the site name as a W3C log writes it (spaces become '+')."""
    if not isinstance(rule.logic, SilkTyphoon):
        return rule
    logic = SilkTyphoon(rule.logic.exchange_site.replace(" ", "+"))
    logic.time_bin = rule.logic.time_bin
    return replace(rule, logic=logic)


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_iis_source_over_the_same_rows_as_logs_gives_the_same_findings(name: str, iis_logs: dict[str, Path]) -> None:
    rule = _site_as_logged(RULES[name])
    total = 0
    for computer, folder in sorted(iis_logs.items()):
        mine = typed([GENERATOR.as_iis_row(r) for r in RAW if r["Computer"] == computer])
        found = as_json(evaluate_window(rule, IisLogSource(folder, computer), step(rule)).findings)
        assert found == oracle(rule, mine, step(rule)), computer
        total += len(found)
        for finding in found:
            assert finding["_ResourceId"] == "" if "_ResourceId" in finding else True
            assert all(e["Type"] != "AzureResource" for e in finding["Entities"])
    assert total, "some finding over the IIS logs"


@pytest.fixture(scope="module")
def workspace(pki: tls.TestPki) -> Iterator[tuple[LogAnalyticsFake, FakeServer]]:
    fake = LogAnalyticsFake(WS)
    fake.load_jsonl(FIXTURE)
    with serve_log_analytics(pki, fake) as server:
        yield fake, server


def _la_source(server: FakeServer, **changes: Any) -> LogAnalyticsSource:
    settings = LogAnalyticsSettings(endpoint=server.url, client_id=CLIENT_ID, **changes)
    return LogAnalyticsSource(WS, settings, pacer=RequestPacer(200, 30.0, sleep=lambda _: None), sleep=lambda _: None)


@pytest.mark.parametrize("mode", ["two-step", "raw"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_log_analytics_gives_the_same_findings(
    name: str, mode: str, workspace: tuple[LogAnalyticsFake, FakeServer], azure_env: FakeServer
) -> None:
    _fake, server = workspace
    rule = RULES[name]
    found = as_json(evaluate_window(rule, _la_source(server, mode=mode), step(rule)).findings)
    assert found == oracle(rule, ROWS, step(rule))


def test_silk_typhoon_pushes_its_14_day_first_phase_down_and_never_pulls_14_days_of_rows(
    workspace: tuple[LogAnalyticsFake, FakeServer], azure_env: FakeServer
) -> None:
    fake, server = workspace
    rule = RULES["silk"]
    start = len(fake.requests)
    run = evaluate_window(rule, _la_source(server), step(rule))
    sent = fake.requests[start:]
    first = [r for r in sent if "| summarize arg_min(TimeGenerated, " in r.query and ") by Computer" in r.query]
    second = [r for r in sent if "| where Computer in (" in r.query]
    assert len(first) == 1 and len(second) == 1
    assert len(sent) == 2  # rowsRead rides on the first phase: no request of its own
    read = Window(END - rule.query_period, END)  # the 14 days the rule reads (as the test above checks)
    assert run.source_stats["rowsRead"] == sum(1 for row in ROWS if read.contains(row["TimeGenerated"]))
    assert 'sSiteName =~ "Exchange Back End"' in first[0].query
    servers = {row["Computer"] for row in ROWS if row["sSiteName"].upper() == "EXCHANGE BACK END"}
    assert first[0].rows == len(servers) + 1 < 10  # a handful of names, whatever 14 days hold, and the row count
    day = Window(END - timedelta(days=1), END)
    assert 'csUriQuery startswith "t="' in second[0].query and "datetime(2026-11-26T00:00:00.000000Z)" in second[0].query
    assert second[0].rows < sum(1 for row in ROWS if day.contains(row["TimeGenerated"]))
    fetched = sum(r.rows for r in sent)
    assert fetched < len(ROWS) / 20
    assert run.findings and run.rows_evaluated <= fetched


def test_an_empty_first_phase_skips_the_second_query(pki: tls.TestPki, azure_env: FakeServer) -> None:
    fake = LogAnalyticsFake(WS)
    fake.add_rows([{"TimeGenerated": END - timedelta(hours=1), "Computer": "web01", "sSiteName": "Default", "csUriQuery": "t=1"}])
    with serve_log_analytics(pki, fake) as server:
        run = evaluate_window(RULES["silk"], _la_source(server), step(RULES["silk"]))
    assert run.findings == []
    assert not any("Computer in (" in r.query for r in fake.requests)


def test_the_row_level_filter_is_pushed_down(workspace: tuple[LogAnalyticsFake, FakeServer], azure_env: FakeServer) -> None:
    fake, server = workspace
    start = len(fake.requests)
    evaluate_window(RULES["proxyshell"], _la_source(server), step(RULES["proxyshell"]))
    (rows_query,) = [r for r in fake.requests[start:] if "| project" in r.query]
    assert 'csUriStem hasprefix "/autodiscover/autodiscover.json"' in rows_query.query
    assert '(scStatus has "200" or scStatus has "302" or scStatus has "401")' in rows_query.query
    window = step(RULES["proxyshell"])
    in_window = [r for r in ROWS if window.contains(r["TimeGenerated"])]
    assert rows_query.rows < len(in_window) / 4


def _selected(rule: Rule) -> list[Row]:
    """Rows of the rule's step that pass its `where` lines (the rule's own code, not the pushdown)."""
    logic = rule.logic
    assert isinstance(logic, AnomalousUserAgent)
    return [row for row in ROWS if step(rule).contains(row["TimeGenerated"]) and logic.selects(row)]


def test_the_user_agent_rules_where_is_pushed_down_whole(
    iis_logs: dict[str, Path], workspace: tuple[LogAnalyticsFake, FakeServer], azure_env: FakeServer
) -> None:
    """string_size included: the file first pass, the IIS first pass and Log Analytics hand the rule only
    the rows its `where` lines keep (the findings are checked against every row above)."""
    rule = RULES["agents"]
    selected = _selected(rule)
    wanted = len(selected)
    assert 0 < wanted < len(ROWS) / 4
    assert evaluate_window(rule, FileSource(FIXTURE), step(rule)).rows_evaluated == wanted
    computers = {row["Computer"] for row in selected}
    on_iis = sum(evaluate_window(rule, IisLogSource(iis_logs[c], c), step(rule)).rows_evaluated for c in computers)
    assert on_iis == wanted
    fake, server = workspace
    start = len(fake.requests)
    evaluate_window(rule, _la_source(server), step(rule))
    (rows_query,) = [r for r in fake.requests[start:] if "| project" in r.query]
    assert "(string_size(csUserAgent) <= 5 or string_size(csUserAgent) >= 1000)" in rows_query.query
    assert rows_query.rows == wanted


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "cIP": st.sampled_from(["", "::1", "192.168.1.4", "192.169.0.1", "10.0.0.4", "2001:db8::1"]),
            "csUserAgent": st.one_of(
                st.sampled_from(["", "-", "msrpc", "MSRPC", "curl", "abcde", "abcdef", "ab\u20ac", "abcd\u20ac"]),
                st.text(min_size=0, max_size=8),
                st.integers(990, 1010).flatmap(lambda n: st.sampled_from(["a" * n, "\u00e9" * (n // 2)])),
            ),
        }
    )
)
def test_the_user_agent_rules_pushdown_filter_is_its_where(row: dict[str, Any]) -> None:
    """Exact, not a superset: every source may hand the rule only these rows."""
    logic = RULES["agents"].logic
    assert isinstance(logic, AnomalousUserAgent)
    spec = logic.candidate_spec()
    assert spec.filter is not None and spec.filter.pushable()
    assert spec.filter.matches(row) == logic.selects(row)


def test_log_analytics_findings_carry_azure_resource_and_account_entities(
    workspace: tuple[LogAnalyticsFake, FakeServer], azure_env: FakeServer
) -> None:
    _fake, server = workspace
    findings = evaluate_window(RULES["proxyshell"], _la_source(server), step(RULES["proxyshell"])).findings
    resources = [e for f in findings for e in f.entities if e.type == "AzureResource"]
    assert resources and all(e.fields["ResourceId"].startswith("/subscriptions/") for e in resources)
    # csUserName "-" (no user) is no Account; a real user name is.
    for finding in findings:
        accounts = [e for e in finding.entities if e.type == "Account"]
        assert bool(accounts) == (finding.columns["csUserName"] not in ("", "-"))


# -- ids, re-checks and the `< 100` threshold -------------------------------------------------------------


def test_a_request_has_one_id_whichever_window_or_source_sees_it(iis_logs: dict[str, Path]) -> None:
    rule = RULES["proxyshell"]
    half_day = step(rule)
    day = Window(END - timedelta(days=1), END)
    from_step = {f.columns["TimeGenerated"]: f.id for f in evaluate_window(rule, FileSource(FIXTURE), half_day).findings}
    from_day = {f.columns["TimeGenerated"]: f.id for f in evaluate_window(rule, FileSource(FIXTURE), day).findings}
    assert from_step and all(from_day[t] == i for t, i in from_step.items())
    # The same requests without Azure Monitor's columns (as an IIS log holds them) keep their ids.
    blank = [{**r, "_ResourceId": "", "FileUri": ""} for r in ROWS]
    assert {f.id for f in evaluate(rule, blank, Window(END - rule.query_period, END))} == set(from_step.values())


class Recording(Sink):
    name = "recording"

    def __init__(self) -> None:
        self.received: list[Finding] = []

    def deliver(self, findings: Sequence[Finding]) -> None:
        self.received += findings


def _agent_row(moment: datetime, **values: Any) -> dict[str, Any]:
    return {
        "TimeGenerated": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cIP": "203.0.113.9",
        "Computer": "web01.contoso.com",
        "sIP": "10.0.0.4",
        "sPort": 443,
        "csUserAgent": "curl",
        "csUserName": "-",
        **values,
    }


def test_a_group_past_the_threshold_after_late_rows_is_not_retracted_nor_duplicated(tmp_path: Path) -> None:
    """`ConnectionCount < 100`: reported at 99; a late row makes it 100; the re-check stages nothing.

    The delivered finding stays as it was (never retracted), and a group still below the threshold that
    grows is updated in place (same id), never sent as a second finding.
    """
    rule = RULES["agents"]
    day = Window(END - timedelta(days=1), END)
    data = tmp_path / "rows.jsonl"
    rows = [_agent_row(day.start + timedelta(minutes=i)) for i in range(99)]
    rows += [_agent_row(day.start + timedelta(hours=2, minutes=i), cIP="198.51.100.5") for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.utime(data, (0, 0))
    sink, store = Recording(), FileStateStore(tmp_path / "state")
    config = Settings.from_env({"DETECTOR_SOURCE": "file:unused"})
    clock_now = [datetime(2030, 1, 1, tzinfo=UTC)]

    def clock() -> datetime:
        return clock_now[0]

    now = END + timedelta(minutes=30)
    first = run_incremental([rule], FileSource(data), [sink], store, now, config, clock)
    assert first.ok and sorted(f.columns["ConnectionCount"] for f in sink.received) == [3, 99]
    ids = {f.columns["cIP"]: f.id for f in sink.received}

    late = [_agent_row(day.start + timedelta(hours=20))]  # the 100th connection of the first group
    late += [_agent_row(day.start + timedelta(hours=21), cIP="198.51.100.5")]  # the 4th of the second
    with data.open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps(r) + "\n" for r in late))
    clock_now[0] += timedelta(hours=1)
    os.utime(data, (clock_now[0].timestamp(), clock_now[0].timestamp()))
    sink.received.clear()
    again = run_incremental([rule], FileSource(data), [sink], store, now + timedelta(minutes=5), config, clock)
    assert again.ok
    assert [r.kind for r in again.rules] == ["recheck"]
    # Only the group still below the threshold comes again, with its new count and its old id.
    assert [(f.id, f.columns["ConnectionCount"]) for f in sink.received] == [(ids["198.51.100.5"], 4)]
    assert store.pending("recording") == []  # nothing left pending, nothing retracted


def test_a_catch_up_and_a_recheck_of_row_level_findings_send_each_request_once(tmp_path: Path) -> None:
    rule = RULES["proxyshell"]
    data = tmp_path / "rows.jsonl"
    shutil.copy(FIXTURE, data)
    os.utime(data, (0, 0))
    sink, store = Recording(), FileStateStore(tmp_path / "state")
    config = Settings.from_env({"DETECTOR_SOURCE": "file:unused", "DETECTOR_CATCHUP_LIMIT": "2d"})
    # A first run evaluates one step; the next, a day later, catches up two steps of 12h, one by one.
    opening = run_incremental([rule], FileSource(data), [sink], store, END - timedelta(days=1, minutes=-30), config)
    assert [(r.window.start, r.window.end) for r in opening.rules] == [(END - timedelta(hours=36), END - timedelta(days=1))]
    now = END + timedelta(minutes=30)
    first = run_incremental([rule], FileSource(data), [sink], store, now, config)
    assert [(r.window.end - r.window.start) for r in first.rules] == [timedelta(hours=12)] * 2
    expected = {f["FindingId"] for f in oracle(rule, ROWS, Window(END - timedelta(hours=36), END))}
    assert expected and {f.id for f in sink.received} == expected and len(sink.received) == len(expected)
    os.utime(data, None)  # the file changed: every evaluated step is re-checked
    sink.received.clear()
    run_incremental([rule], FileSource(data), [sink], store, now + timedelta(minutes=5), config)
    assert sink.received == []  # same requests, same ids, same content: nothing sent again
