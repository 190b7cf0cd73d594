"""The Log Analytics source through the real SDK and managed-identity credential, against the HTTPS fake."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector import cli
from detector.config import LogAnalyticsSettings, Settings
from detector.errors import ConfigError, SourceError
from detector.kql import bin_datetime, format_datetime
from detector.models import Finding, Window
from detector.rules import Rule, load_rules
from detector.runner import evaluate_window, run_scheduled
from detector.sources import open_source
from detector.sources.file import FileSource
from detector.sources.kql_query import datetime_literal
from detector.sources.loganalytics import LogAnalyticsSource, QueryLimits, RequestPacer, _Piece, _table_rows
from tests.fakes import tls
from tests.fakes.loganalytics import INGESTION_COLUMN, Fault, LogAnalyticsFake, serve_log_analytics
from tests.fakes.server import FakeServer
from tests.helpers import FILES

WS = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DAY = datetime(2026, 11, 26, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))
ROWS = FILES / "w3ciislog.jsonl"


@dataclass
class Workspace:
    """A running fake workspace and what a test needs to build sources against it."""

    fake: LogAnalyticsFake
    server: FakeServer
    identity: FakeServer
    expected: list[dict[str, Any]]  # the file source's findings over the same rows
    sleeps: list[float] = field(default_factory=list)

    def settings(self, **changes: Any) -> LogAnalyticsSettings:
        values: dict[str, Any] = {"endpoint": self.server.url, "client_id": CLIENT_ID, **changes}
        return LogAnalyticsSettings(**values)

    def source(self, limits: QueryLimits | None = None, **changes: Any) -> LogAnalyticsSource:
        # A pacer of its own per source so one test's requests never slow another's; sleeps are recorded.
        pacer = RequestPacer(200, 30.0, sleep=self.sleeps.append)
        return LogAnalyticsSource(WS, self.settings(**changes), limits=limits, pacer=pacer, sleep=self.sleeps.append)


@pytest.fixture
def workspace(azure_env: FakeServer, pki: tls.TestPki, file_findings: list[dict[str, Any]]) -> Iterator[Workspace]:
    fake = LogAnalyticsFake(WS)
    fake.load_jsonl(ROWS)
    with serve_log_analytics(pki, fake) as server:
        yield Workspace(fake, server, azure_env, file_findings)


@pytest.fixture(scope="module")
def rule() -> Rule:
    return load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0]


def as_json(findings: list[Finding]) -> list[dict[str, Any]]:
    return [f.to_json() for f in findings]


@pytest.fixture(scope="module")
def file_findings(rule: Rule) -> list[dict[str, Any]]:
    """The oracle: the file source over the same rows, checked against the generator's expectations."""
    findings = as_json(evaluate_window(rule, FileSource(ROWS), WINDOW).findings)
    expected = json.loads((FILES / "expected_findings.json").read_text(encoding="utf-8"))
    keys = ("TimeGenerated", "cIP", "Computer", "sIP", "portCount", "ConnectionsCount")
    assert [{k: f[k] for k in keys} for f in findings] == expected
    return findings


def findings_of(rule: Rule, source: LogAnalyticsSource, window: Window = WINDOW) -> list[dict[str, Any]]:
    return as_json(evaluate_window(rule, source, window).findings)


def _fixture_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in ROWS.read_text(encoding="utf-8").splitlines()]


def rows_in(window: Window) -> int:
    """Rows of the fixture file in the window, counted in Python (not by the KQL under test)."""
    return sum(window.contains(datetime.fromisoformat(row["TimeGenerated"])) for row in _fixture_rows())


def candidate_bins_in(window: Window) -> int:
    """(10-minute bin, cIP, Computer, sIP) groups of the window with >= 30 distinct ports, counted in Python."""
    ports: dict[tuple[Any, ...], set[int]] = {}
    for row in _fixture_rows():
        moment = datetime.fromisoformat(row["TimeGenerated"])
        if window.contains(moment):
            key = (bin_datetime(moment, timedelta(minutes=10)), row["cIP"], row["Computer"], row["sIP"])
            ports.setdefault(key, set()).update([row["sPort"]] if row["sPort"] is not None else [])
    return sum(len(found) >= 30 for found in ports.values())


# -- requests per window: rowsRead rides on a query that runs anyway --------------------------------------

SIX_HOURS = [Window(DAY + timedelta(hours=h), DAY + timedelta(hours=h + 6)) for h in range(0, 24, 6)]
EMPTY = Window(DAY + timedelta(days=3), DAY + timedelta(days=3, hours=6))  # the workspace holds nothing here


@pytest.mark.parametrize("mode", ["two-step", "raw"])
def test_rows_read_costs_no_request_of_its_own(workspace: Workspace, rule: Rule, mode: str) -> None:
    # Per window: two-step asks for candidates, then (when there are any) their rows; raw counts rows per
    # bin, then (when there are rows) fetches them in one slice here. Nothing else: no query only for rowsRead.
    seen = []
    for window in [*SIX_HOURS, EMPTY]:
        before = len(workspace.fake.requests)
        run = evaluate_window(rule, workspace.source(mode=mode), window)
        sent = workspace.fake.requests[before:]
        has_more = candidate_bins_in(window) > 0 if mode == "two-step" else rows_in(window) > 0
        assert len(sent) == 1 + has_more, (window, [r.query for r in sent])
        assert run.source_stats["requests"] == len(sent)
        assert run.source_stats["rowsRead"] == rows_in(window), window
        seen.append((len(sent), run.source_stats["rowsRead"]))
    assert sum(rows for _, rows in seen) == rows_in(WINDOW)  # the four windows cover the day
    assert {count for count, _ in seen} == {1, 2}  # windows with and without a second request were both met


def test_the_row_count_is_told_apart_and_must_come_once_per_answer() -> None:
    source = LogAnalyticsSource(WS, LogAnalyticsSettings(endpoint="https://127.0.0.1:1", client_id=CLIENT_ID))
    piece = _Piece("candidates", WINDOW.start, WINDOW.end, "", lambda: (), counts_window=True)
    group: dict[str, Any] = {"TimeGenerated": DAY, "cIP": "", "rows": 31, "total": None}  # "" is a real key value
    count: dict[str, Any] = {"TimeGenerated": None, "cIP": "", "rows": None, "total": 1333}  # Kusto: a string cell is ""
    assert source._count_window([count, group], piece, WINDOW) == [group]
    assert source.stats.rows_read == 1333
    answers: list[list[dict[str, Any]]] = [[group], [group, count, count]]
    for answer in answers:
        with pytest.raises(SourceError, match=r"window \[2026-11-26.*holds [02] row counts where the query asks for one"):
            source._count_window(answer, piece, WINDOW)
    assert source.stats.rows_read == 1333


# -- the same findings whichever way the rows are read ---------------------------------------------------


@pytest.mark.parametrize("mode", ["two-step", "raw"])
def test_findings_equal_the_file_source(workspace: Workspace, rule: Rule, mode: str) -> None:
    source = workspace.source(mode=mode)
    assert findings_of(rule, source) == workspace.expected
    assert source.stats.splits == 0
    assert source.stats.retries == 0
    assert all(not r.partial and r.status == 200 for r in workspace.fake.requests)


def test_two_step_reads_only_candidate_groups_and_columns(workspace: Workspace, rule: Rule) -> None:
    source = workspace.source()
    run = evaluate_window(rule, source, WINDOW)
    # Independent count of the rows of groups with >= 30 distinct ports, from the fixture file.
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for line in ROWS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        moment = datetime.fromisoformat(row["TimeGenerated"])
        if WINDOW.contains(moment):
            key = (bin_datetime(moment, timedelta(minutes=10)), row["cIP"], row["Computer"], row["sIP"])
            groups.setdefault(key, []).append(row["sPort"])
    candidate_rows = sum(len(ports) for ports in groups.values() if len({p for p in ports if p is not None}) >= 30)
    assert run.rows_evaluated == candidate_rows
    assert run.rows_evaluated < sum(len(ports) for ports in groups.values()) / 2
    queries = [r.query for r in workspace.fake.requests]
    assert len(queries) == 2  # candidates (carrying the window's row count), details
    assert "summarize" in queries[0]
    assert "| summarize total = count())" in queries[0]
    assert run.source_stats["rowsRead"] == sum(len(ports) for ports in groups.values())
    assert "summarize" not in queries[1]
    assert queries[1].rstrip().endswith("| project " + ", ".join(rule.logic.columns))


def test_every_query_is_bounded_in_time(workspace: Workspace, rule: Rule) -> None:
    for mode in ("two-step", "raw"):
        findings_of(rule, workspace.source(mode=mode, server_timeout=timedelta(seconds=90)))
    assert len(workspace.fake.requests) == 4  # two-step: candidates, details; raw: bin counts, rows
    for record in workspace.fake.requests:
        assert record.timespan
        start, end = (datetime.fromisoformat(part) for part in record.timespan.split("/"))
        assert WINDOW.start <= start < end <= WINDOW.end
        assert record.prefer == "wait=90"
        # The same bounds in the KQL, half-open there (the row count's too).
        bounds = f"TimeGenerated >= {datetime_literal(start)} and TimeGenerated < {datetime_literal(end)}"
        assert record.query.count(bounds) == (2 if "| union (" in record.query else 1)
    assert workspace.fake.requests[0].timespan == "2026-11-26T00:00:00.000Z/2026-11-27T00:00:00.000Z"


def test_window_end_is_exclusive_although_the_timespan_is_not(workspace: Workspace, rule: Rule) -> None:
    # A scan planted at exactly the window's end must not be seen, while the fake (like the API)
    # includes rows at the timespan's end instant.
    late_scan = [
        {"TimeGenerated": WINDOW.end, "cIP": "198.18.0.1", "Computer": "web09", "sIP": "10.9.9.9", "sPort": port}
        for port in range(1000, 1040)
    ]
    workspace.fake.add_rows(late_scan)
    for mode in ("two-step", "raw"):
        assert all(f["cIP"] != "198.18.0.1" for f in findings_of(rule, workspace.source(mode=mode)))
    later = Window(WINDOW.end, WINDOW.end + timedelta(minutes=10))
    assert "198.18.0.1" in [f["cIP"] for f in findings_of(rule, workspace.source(), later)]


def test_hostile_group_keys_are_fetched_exactly(workspace: Workspace, rule: Rule) -> None:
    hostile = ['x" or 1==1 or cIP == "', "back\\slash\nnewline", "' | take 1"]
    rows = [
        {
            "TimeGenerated": DAY + timedelta(hours=20, seconds=port - 2000),
            "cIP": cip,
            "Computer": f"web{i}",
            "sIP": "10.0.0.4",
            "sPort": port,
        }
        for i, cip in enumerate(hostile)
        for port in range(2000, 2030 + i)
    ]
    workspace.fake.add_rows(rows)
    two_step = findings_of(rule, workspace.source())
    assert two_step == findings_of(rule, workspace.source(mode="raw"))
    assert {f["cIP"] for f in two_step} >= set(hostile)


def test_managed_identity_with_the_configured_client_id(workspace: Workspace, rule: Rule) -> None:
    findings_of(rule, workspace.source())
    asked = workspace.identity.state["requests"]
    assert asked
    assert {a["client_id"] for a in asked} == {CLIENT_ID}
    assert {a["resource"] for a in asked} == {workspace.server.url}  # the SDK's audience: its endpoint


def test_developer_credential_when_no_client_id(workspace: Workspace, rule: Rule) -> None:
    # DefaultAzureCredential: here its managed-identity step answers (system-assigned: no client id sent).
    assert findings_of(rule, workspace.source(client_id="")) == workspace.expected
    asked = workspace.identity.state["requests"]
    assert {a["client_id"] for a in asked} == {""}


# -- limits: split until whole ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["two-step", "raw"])
@pytest.mark.parametrize(("max_rows", "max_bytes"), [(150, 100 * 2**20), (100_000, 30_000)])
def test_cut_answers_are_split_until_whole(workspace: Workspace, rule: Rule, mode: str, max_rows: int, max_bytes: int) -> None:
    workspace.fake.max_rows, workspace.fake.max_bytes = max_rows, max_bytes
    source = workspace.source(mode=mode)
    assert findings_of(rule, source) == workspace.expected
    assert source.stats.splits > 0
    assert any(r.partial for r in workspace.fake.requests)
    assert source.stats.retries == 0
    assert source.read_stats()["rowsRead"] == rows_in(WINDOW)  # the halves' counts add up to the window's


def test_reads_are_planned_under_the_row_limit(workspace: Workspace, rule: Rule) -> None:
    # With the plan sized to the service's limit, no answer is ever cut: splitting is the fallback, not the plan.
    workspace.fake.max_rows = 300
    limits = QueryLimits(rows_per_request=300, ranges_per_request=2)
    for mode in ("two-step", "raw"):
        source = workspace.source(limits=limits, mode=mode)
        assert findings_of(rule, source) == workspace.expected
        assert source.stats.splits == 0
    assert not any(r.partial for r in workspace.fake.requests)
    assert max(r.rows for r in workspace.fake.requests) <= 300
    details = [r for r in workspace.fake.requests if "summarize" not in r.query and "distinct_values" not in r.query]
    assert len(details) >= 1 + 1333 // 300  # raw slices
    assert sum(r.query.count(" == ") for r in details) >= 6  # two-step ranges, two per query at most


def test_a_bin_too_big_to_answer_whole_fails_loudly(workspace: Workspace, rule: Rule) -> None:
    # 18:40 holds two candidate groups: with room for one row per answer, that bin cannot be counted whole.
    workspace.fake.max_rows = 1
    with pytest.raises(SourceError, match=r"window \[2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z\).*cannot be split further"):
        findings_of(rule, workspace.source())


# -- faults: whole results or a loud failure, never fewer findings --------------------------------------

TRANSIENT = [
    pytest.param([Fault("status", 429, retry_after=2)] * 2, [2.0, 2.0], id="429-retry-after"),
    pytest.param([Fault("status", 429)], [1.0], id="429-no-retry-after"),
    pytest.param([Fault("status", 503, retry_after=1), Fault("status", 502)], [1.0, 2.0], id="503-then-502"),
    pytest.param([Fault("status", 500)], [1.0], id="500"),
    pytest.param([Fault("status", 504)], [1.0], id="504-server-timeout"),
    pytest.param([Fault("no_content")], [1.0], id="204"),
    pytest.param([Fault("no_tables")], [1.0], id="no-tables"),
    pytest.param([Fault("cut_body")], [1.0], id="body-cut-short"),
]


@pytest.mark.parametrize("mode", ["two-step", "raw"])
@pytest.mark.parametrize(("faults", "waits"), TRANSIENT)
def test_transient_faults_are_retried_to_whole_results(
    workspace: Workspace, rule: Rule, mode: str, faults: list[Fault], waits: list[float]
) -> None:
    workspace.fake.script(*faults)
    source = workspace.source(mode=mode)
    assert findings_of(rule, source) == workspace.expected
    assert workspace.sleeps == waits  # Retry-After when given, else exponential backoff
    assert source.stats.retries == len(faults)


@pytest.mark.parametrize("number", [1, 2])
def test_failure_of_the_nth_request_is_retried(workspace: Workspace, rule: Rule, number: int) -> None:
    workspace.fake.fail_at(number, Fault("status", 503))
    source = workspace.source()
    assert findings_of(rule, source) == workspace.expected
    assert [r.status for r in workspace.fake.requests] == [200] * (number - 1) + [503, 200] + [200] * (2 - number)
    assert source.read_stats()["rowsRead"] == rows_in(WINDOW)


@pytest.mark.parametrize("fault", ["partial_without_data", "partial_with_data"])
@pytest.mark.parametrize("mode", ["two-step", "raw"])
def test_a_partial_answer_is_split_not_trusted(workspace: Workspace, rule: Rule, mode: str, fault: str) -> None:
    # The first answer (candidates, or raw's per-bin counts) is partial; with its rows it also holds a
    # row count, which must not be added to those of the halves asked instead.
    workspace.fake.script(Fault(fault))
    source = workspace.source(mode=mode)
    assert findings_of(rule, source) == workspace.expected
    assert source.stats.splits == 1
    assert source.read_stats()["rowsRead"] == rows_in(WINDOW)
    assert workspace.fake.requests[0].partial


def test_a_hung_request_times_out_and_is_retried(workspace: Workspace, rule: Rule) -> None:
    # The fake holds the first answer until the client asks again. The client's read timeout is cut from
    # its default (the server timeout plus 10 % and a second) to 1 s: what the hang costs the test, and
    # several times what the fake takes to answer a query here.
    workspace.fake.script(Fault("hang", seconds=60))
    source = workspace.source(limits=QueryLimits(read_timeout_seconds=1.0), server_timeout=timedelta(seconds=1))
    assert findings_of(rule, source) == workspace.expected
    assert source.stats.retries == 1
    assert workspace.fake.requests[0].prefer == "wait=1"
    assert workspace.fake.requests[0].fault == "hang"


def test_a_slow_query_past_its_server_timeout_is_retried(workspace: Workspace, rule: Rule) -> None:
    workspace.fake.script(Fault("slow_query", seconds=2))
    source = workspace.source(server_timeout=timedelta(seconds=1))
    assert findings_of(rule, source) == workspace.expected
    assert [r.status for r in workspace.fake.requests][:2] == [504, 200]
    assert workspace.sleeps == [1.0]


PERSISTENT = [
    pytest.param(Fault("status", 429, retry_after=1), "HTTP 429", id="429"),
    pytest.param(Fault("status", 503), "HTTP 503", id="503"),
    pytest.param(Fault("no_content"), "HTTP 204 without a body", id="204"),
    pytest.param(Fault("partial_without_data"), "gave up after 40 requests|cannot be split further", id="partial"),
    pytest.param(Fault("cut_body"), "failed 6 times", id="body-cut-short"),
]


@pytest.mark.parametrize("mode", ["two-step", "raw"])
@pytest.mark.parametrize(("fault", "message"), PERSISTENT)
def test_persistent_faults_fail_the_window_loudly(
    workspace: Workspace, rule: Rule, mode: str, fault: Fault, message: str
) -> None:
    workspace.fake.fail_always(fault)
    source = workspace.source(limits=QueryLimits(max_requests=40), mode=mode)
    with pytest.raises(SourceError, match=r"window \[2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z\)") as caught:
        findings_of(rule, source)
    assert re.search(message, str(caught.value))
    assert len(workspace.fake.requests) <= 40


RESHAPED = [
    pytest.param("sPort", "drop", "lacks column\\(s\\) sPort", id="sPort-missing"),
    pytest.param("cIP", "drop", "lacks column\\(s\\) cIP", id="cIP-missing"),
    pytest.param("sPort", "string", "gives sPort as string, where W3CIISLog has int", id="sPort-a-string"),
    pytest.param("sPort", "real", "gives sPort as real", id="sPort-a-real"),
    pytest.param("sPort", "ragged", "holds a row whose values do not match its", id="a-row-too-short"),
    pytest.param("sPort", "ragged+", "holds a row whose values|not a table the SDK can read", id="a-row-too-long"),
]


@pytest.mark.parametrize("mode", ["two-step", "raw"])
@pytest.mark.parametrize(("column", "change", "message"), RESHAPED)
def test_an_answer_of_another_shape_fails_the_window_loudly(
    workspace: Workspace, rule: Rule, mode: str, column: str, change: str, message: str
) -> None:
    """A table of another schema (a custom DETECTOR_LOGS_TABLE whose sPort is text) would make every row
    a skipped line: a run that finds nothing and succeeds. It is one error naming the column instead."""
    workspace.fake.fail_always(Fault("reshaped", column=column, change=change))
    with pytest.raises(SourceError, match=r"window \[2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z\)") as caught:
        findings_of(rule, workspace.source(mode=mode))
    assert re.search(message, str(caught.value)), str(caught.value)
    assert "DETECTOR_LOGS_TABLE" in str(caught.value)


def test_retry_waits_are_bounded(workspace: Workspace, rule: Rule) -> None:
    workspace.fake.script(Fault("status", 429, retry_after=500))
    with pytest.raises(SourceError, match="exceeds the retry budget"):
        findings_of(rule, workspace.source())
    assert workspace.sleeps == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "NoSuchTable"}, "HTTP 400.*DETECTOR_LOGS_TABLE"),
        ({"endpoint": "https://127.0.0.1:1"}, "failed 6 times"),
    ],
)
def test_configuration_mistakes_fail_with_a_hint(workspace: Workspace, rule: Rule, change: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        findings_of(rule, workspace.source(**change))


def test_wrong_workspace_and_wrong_audience(workspace: Workspace, rule: Rule) -> None:
    other = LogAnalyticsSource("99999999-2222-3333-4444-555555555555", workspace.settings())
    with pytest.raises(SourceError, match=r"HTTP 404.*workspace id"):
        findings_of(rule, other)
    workspace.fake.audience = "https://api.loganalytics.io"  # a token minted for another audience
    with pytest.raises(SourceError, match=r"HTTP 401.*Log Analytics Data Reader.*condition"):
        findings_of(rule, workspace.source())


def test_workspace_id_must_be_a_guid(workspace: Workspace) -> None:
    with pytest.raises(ConfigError, match=r"DETECTOR_SOURCE.*GUID"):
        LogAnalyticsSource("contoso/../query", workspace.settings())


# -- types, late data ------------------------------------------------------------------------------------


def test_dynamic_columns_and_seven_digit_datetimes(workspace: Workspace) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.monitor.query import LogsQueryClient, LogsQueryResult

    with LogsQueryClient(ManagedIdentityCredential(client_id=CLIENT_ID), endpoint=workspace.server.url) as client:
        result = client.query_workspace(
            WS,
            'print d = pack_array(1, "a"), t = datetime(2026-11-26T00:00:00.1234567Z), n = int(null)',
            timespan=(WINDOW.start, WINDOW.end),
        )
    assert isinstance(result, LogsQueryResult)
    [row] = _table_rows(result.tables[0], WINDOW)
    assert row == {"d": [1, "a"], "t": DAY.replace(microsecond=123456), "n": None}


@pytest.mark.parametrize("text", ["not json", "9" * 5000, "[" * 100_000])
def test_a_dynamic_value_json_refuses_stays_the_text_it_is(text: str) -> None:
    from types import SimpleNamespace

    table = SimpleNamespace(columns=["d"], columns_types=["dynamic"], rows=[[text]])
    assert _table_rows(table, WINDOW) == [{"d": text}]


@pytest.mark.parametrize("mode", ["two-step", "raw"])
def test_a_time_bin_of_a_fraction_of_a_second_bins_the_same_server_side(
    workspace: Workspace, rule: Rule, mode: str, tmp_path: Path
) -> None:
    """A 1500ms bin is sent as 1500ms, not cut to 1s: 30 ports of one client within one 1.5 s bin (15 in
    its first second, 15 after) are one finding in the workspace as in a file."""
    import dataclasses

    logic = type(rule.logic).from_parameters({**rule.parameters, "timeBin": "1500ms"})
    fast = dataclasses.replace(rule, logic=logic)
    start = DAY + timedelta(hours=9)
    rows = [
        {"TimeGenerated": format_datetime(start + timedelta(milliseconds=50 * i)), "Computer": "web09", "sIP": "10.0.0.9"}
        | {"sPort": 9000 + i, "cIP": "203.0.113.250", "scStatus": "200"}
        for i in range(30)
    ]
    workspace.fake.add_rows(rows)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    window = Window(start, start + timedelta(minutes=30))
    expected = as_json(evaluate_window(fast, FileSource(path), window).findings)
    assert len(expected) == 1
    assert findings_of(fast, workspace.source(mode=mode), window) == expected
    assert "bin(TimeGenerated, 1500ms)" in workspace.fake.requests[0].query


def test_late_bins(workspace: Workspace) -> None:
    source = workspace.source()
    # Every bin with rows, when everything arrived after the cutoff.
    all_bins = source.late_bins(WINDOW, DAY - timedelta(days=1), timedelta(minutes=10))
    assert DAY + timedelta(hours=10) in all_bins
    assert len(all_bins) == 144
    # Rows of 10:00-10:20 arrive a day late: only those bins are late after a cutoff between.
    workspace.fake.set_ingestion_time(DAY + timedelta(hours=10), DAY + timedelta(hours=10, minutes=20), DAY + timedelta(days=2))
    late = source.late_bins(WINDOW, DAY + timedelta(days=1, hours=1), timedelta(minutes=10))
    assert late == {DAY + timedelta(hours=10), DAY + timedelta(hours=10, minutes=10)}
    assert "_IngestionTime" not in workspace.fake.requests[-1].query  # production KQL says ingestion_time()
    assert "ingestion_time()" in workspace.fake.requests[-1].query


# -- the command line ------------------------------------------------------------------------------------


def test_cli_runs_against_the_workspace(
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DETECTOR_LOGS_ENDPOINT", workspace.server.url)
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)
    out = tmp_path / "findings.jsonl"
    argv = [
        "run",
        "--source",
        f"loganalytics:{WS}",
        "--start",
        format_datetime(WINDOW.start),
        "--end",
        format_datetime(WINDOW.end),
    ]
    assert cli.main([*argv, "--sink", f"jsonl:{out}"]) == 0
    delivered = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(delivered, key=lambda f: f["FindingId"]) == sorted(workspace.expected, key=lambda f: f["FindingId"])
    assert "7 finding(s)" in capsys.readouterr().err

    monkeypatch.setenv("DETECTOR_LOGS_TABLE", "W3CIISLog | where sPort != 80")
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    assert "setting DETECTOR_LOGS_TABLE" in capsys.readouterr().err

    monkeypatch.setenv("DETECTOR_LOGS_TABLE", "NoSuchTable")
    other = tmp_path / "none.jsonl"
    assert cli.main([*argv, "--sink", f"jsonl:{other}"]) == cli.EXIT_FAILED
    assert "error: loganalytics:" in capsys.readouterr().err
    assert not other.exists() or not other.read_text(encoding="utf-8").strip()


def test_open_source_uses_settings(workspace: Workspace) -> None:
    from detector.config import Settings

    settings = Settings.from_env(
        {"DETECTOR_SOURCE": f"loganalytics:{WS}", "DETECTOR_LOGS_ENDPOINT": workspace.server.url, "DETECTOR_LOGS_MODE": "raw"}
    )
    source = open_source(settings.source, settings, setting="DETECTOR_SOURCE")
    assert isinstance(source, LogAnalyticsSource)
    assert source.describe() == f"loganalytics:{WS} (raw, table W3CIISLog, {workspace.server.url})"


# -- the scheduled run: checkpoint, outbox and the late-data re-check through ingestion_time() -------------


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_scheduled_runs_find_the_same_and_pick_up_late_rows_once(workspace: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "findings.jsonl"
    settings = Settings.from_env(
        {
            "DETECTOR_RULES": "44a555d8-ecee-4a25-95ce-055879b4b14b",  # the workspace's day is the port rule's
            "DETECTOR_SOURCE": f"loganalytics:{WS}",
            "DETECTOR_LOGS_ENDPOINT": workspace.server.url,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_SINKS": f"jsonl:{out}",
            "DETECTOR_STATE": f"file:{tmp_path / 'state'}",
            "DETECTOR_NOW": "2026-11-27T00:35:00Z",
        }
    )
    first = run_scheduled(settings, now=datetime.now(UTC))
    assert first.ok, first.to_json()
    assert sorted(records(out), key=lambda r: r["FindingId"]) == sorted(workspace.expected, key=lambda r: r["FindingId"])
    assert first.to_json()["windows"][0]["requests"] >= 1  # the source's wire figures reach the summary

    # A batch for 12:00 arrives now, long after that bin was evaluated.
    late = [
        {
            "TimeGenerated": datetime(2026, 11, 26, 12, 3, tzinfo=UTC),
            "cIP": "203.0.113.200",
            "Computer": "web01.contoso.com",
            "sIP": "10.0.0.4",
            "sPort": port,
            "csUserName": "-",
            INGESTION_COLUMN: datetime.now(UTC) + timedelta(minutes=1),
        }
        for port in range(2000, 2040)
    ]
    workspace.fake.add_rows(late)
    second = run_scheduled(settings, now=datetime.now(UTC) + timedelta(minutes=2))
    assert second.ok, second.to_json()
    rechecks = [w for w in second.to_json()["windows"] if w["kind"] == "recheck"]
    assert [(w["start"], w["end"]) for w in rechecks] == [("2026-11-26T12:00:00Z", "2026-11-26T12:10:00Z")]
    ips = [r["cIP"] for r in records(out)]
    assert ips.count("203.0.113.200") == 1
    assert len(ips) == len(workspace.expected) + 1


LOGON_ROWS = FILES / "w3ciislog_logons.jsonl"


@pytest.mark.parametrize("rule_id", ["19e01883-15d8-4eb6-a7a5-3276cd668388", "884c4957-70ea-4f57-80b9-1bca3890315b"])
def test_failed_logon_rules_are_pushed_down_not_pulled_raw(azure_env: FakeServer, pki: tls.TestPki, rule_id: str) -> None:
    """Each failed-logon rule's description runs server-side: the candidates query counts failed logons
    per bin and keys, and only the candidate groups' failed logons come back, never the day's raw rows."""
    rule = load_rules(rule_id)[0]
    expected = as_json(evaluate_window(rule, FileSource(LOGON_ROWS), WINDOW).findings)
    assert expected
    fake = LogAnalyticsFake(WS)
    total = fake.load_jsonl(LOGON_ROWS)
    with serve_log_analytics(pki, fake) as server:
        workspace = Workspace(fake, server, azure_env, expected)
        source = workspace.source()
        run = evaluate_window(rule, source, WINDOW)
        assert as_json(run.findings) == expected
        queries = [r.query for r in fake.requests]
        assert len(queries) == 2  # candidates (carrying the window's row count), details
        assert "summarize rows = count() by TimeGenerated = bin(TimeGenerated" in queries[0]
        assert '| where (scStatus in ("401", "403") and csUserName != "-")' in queries[0]
        assert '| where (scStatus in ("401", "403") and csUserName != "-")' in queries[1]
        returned = sum(r.rows for r in fake.requests[1:])
        in_window = run.source_stats["rowsRead"]
        assert returned == run.rows_evaluated
        # Only rows of groups at the threshold came back: a small part of the day (the fake counted them).
        assert returned < in_window / 4 < total
        rule_rows = [json.loads(line) for line in LOGON_ROWS.read_text(encoding="utf-8").splitlines()]
        failed = [r for r in rule_rows if r.get("scStatus") in ("401", "403") and r.get("csUserName") != "-"]
        assert returned <= len(failed)
