"""The loganalytics-table sink: the real LogsIngestionClient and ManagedIdentityCredential against the fake
Logs Ingestion API, the schema file infra loads, and the alert rule that reads the table."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb_kql
import pytest

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.evaluate import evaluate
from detector.identity import build_credential
from detector.models import Finding, Row
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.sinks import open_sink
from detector.sinks.http_delivery import RetrySettings
from detector.sinks.ingestion import (
    COLUMNS,
    DYNAMIC_LIMIT,
    SCHEMA_PATH,
    Column,
    LogsIngestionSink,
    alert_rule_template,
    alert_rules_document,
    finding_row,
    fit_result,
    monitor_scope,
    schema_document,
    schema_problems,
)
from tests.fakes.ingestion import IngestionHandler, row_problems, stream_columns
from tests.fakes.server import FakeServer, serve
from tests.helpers import DAY, ROOT
from tests.sink_support import CLIENT_ID, DCR_ID, findings, the_rule

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

SCHEMA_DIR = SCHEMA_PATH.parent
STREAM = "Custom-IISPortScanFindings_CL"


@pytest.fixture
def ingestion(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(IngestionHandler, pki, streams={DCR_ID: stream_columns(SCHEMA_PATH)}) as server:
        yield server


def state(server: FakeServer) -> dict[str, Any]:
    return server.state


def settings_for(server: FakeServer, dcr: str = DCR_ID) -> Settings:
    return Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:unused",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_INGESTION_ENDPOINT": server.url,
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": dcr,
        }
    )


def sink(
    server: FakeServer, waits: list[float] | None = None, clock: datetime | None = None, max_wait: float = 60
) -> LogsIngestionSink:
    return LogsIngestionSink(
        server.url,
        DCR_ID,
        STREAM,
        credential=build_credential(settings_for(server)),
        retry=RetrySettings(sleep=(waits.append if waits is not None else lambda _: None), max_wait=max_wait),
        clock=(lambda: clock) if clock else None,
    )


def many_findings(count: int, agent_length: int = 200) -> list[Finding]:
    """`count` scans of 30 ports each, through the real engine (for payloads above 1 MiB)."""
    start = DAY.start + timedelta(hours=1)
    rows: list[Row] = []
    for n in range(count):
        for port in range(30):
            rows.append(
                {
                    "TimeGenerated": start + timedelta(seconds=port),
                    "cIP": f"198.51.{n // 250}.{n % 250}",
                    "Computer": "web01.contoso.com",
                    "sIP": "10.0.0.4",
                    "sPort": 10000 + port,
                    "csMethod": "GET",
                    "csUriQuery": "-",
                    "csUserName": "-",
                    "sSiteName": "Default Web Site",
                    "csUserAgent": f"scanner-{port}-" + "x" * agent_length,
                    "scStatus": "404",
                    "scSubStatus": "0",
                    "scWin32Status": "2",
                }
            )
    return evaluate(the_rule(), rows, DAY)


# ---------------------------------------------------------------------------------------------------
# The schema infra deploys


def test_schema_file_is_generated_from_the_code() -> None:
    on_disk = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert on_disk == schema_document(), "run: python infra/schema/generate.py"


def test_declared_columns_are_valid_for_a_custom_table() -> None:
    assert schema_problems() == []
    document = schema_document()
    assert document["tableName"].endswith("_CL")
    assert document["streamName"] == f"Custom-{document['tableName']}"
    stream = document["streamDeclarations"][document["streamName"]]["columns"]
    assert [c["name"] for c in stream] == [c["name"] for c in document["tableColumns"]]
    assert all(set(c) == {"name", "type"} for c in stream)  # DCR stream columns take name and type only


@pytest.mark.parametrize("bad", ["Title", "id", "TenantId", "_ResourceId", "2ndPort", "a-b"])
def test_schema_check_refuses_names_log_analytics_refuses(bad: str) -> None:
    assert schema_problems((*COLUMNS, Column(bad, "string", "x")))


def test_every_row_matches_the_declared_schema() -> None:
    columns = stream_columns(SCHEMA_PATH)[STREAM]
    for finding in [*findings(), *many_findings(3, agent_length=40_000)]:
        row = finding_row(finding, datetime.now(UTC))
        assert row_problems(row, columns) == []
        assert set(row) == set(columns)
        assert all(len(json.dumps(v)) < 64 * 1024 for v in row.values())  # the service truncates fields at 64 KB
        assert len(json.dumps(row["Result"])) <= DYNAMIC_LIMIT


def test_oversized_value_sets_are_shortened_and_named() -> None:
    (finding, *_) = many_findings(1, agent_length=5_000)
    row = finding_row(finding, datetime.now(UTC))
    assert row["TruncatedColumns"] == ["set_csUserAgent"]
    result = row["Result"]
    assert 0 < len(result["set_csUserAgent"]) < 30
    assert result["set_csUserAgent"] == finding.columns["set_csUserAgent"][: len(result["set_csUserAgent"])]
    assert result["portCount"] == 30
    assert len(result["set_sPort"]) == 30
    assert len(json.dumps(result)) <= DYNAMIC_LIMIT


def test_a_huge_single_value_is_cut_not_dropped() -> None:
    (finding, *_) = many_findings(1)
    columns = {**finding.columns, "cIP": "x" * 100_000}
    result, truncated = fit_result(columns)
    assert truncated == ["cIP"]
    assert result["cIP"].startswith("xxx") and result["cIP"].endswith("\u2026")
    assert len(json.dumps(result)) <= DYNAMIC_LIMIT
    assert result["set_sPort"] == finding.columns["set_sPort"]  # the small columns stay whole


def test_the_row_has_the_rules_presentation_and_its_whole_result() -> None:
    finding = findings()[2]
    row = finding_row(finding, datetime.now(UTC))
    assert row["FindingTitle"] == finding.title == "203.0.113.51 on web01.contoso.com (31 ports)"
    assert row["Summary"] == finding.summary
    assert list(row["Result"]) == list(finding.columns)  # KQL names, KQL order
    assert row["Evidence"][0] == {"label": "Ports", "column": "set_sPort"}
    assert {e["Type"] for e in row["Entities"]} == {"IP", "Host"}


# ---------------------------------------------------------------------------------------------------
# Delivery against the fake service


def test_rows_arrive_gzip_compressed_and_match_the_findings(ingestion: FakeServer, azure_env: FakeServer) -> None:
    found = findings()
    open_sink("loganalytics-table", settings_for(ingestion)).deliver(found)

    rows = state(ingestion)["rows"]
    assert [r["FindingId"] for r in rows] == [f.id for f in found]
    (call,) = state(ingestion)["calls"]
    assert call["gzip"]
    assert call["compressed"] < call["uncompressed"]
    for row, finding in zip(rows, found, strict=True):
        c, result = finding.columns, row["Result"]
        assert (result["cIP"], result["Computer"], result["sIP"]) == (c["cIP"], c["Computer"], c["sIP"])
        assert (result["portCount"], result["ConnectionsCount"]) == (c["portCount"], c["ConnectionsCount"])
        assert sorted(result["set_sPort"]) == sorted(c["set_sPort"])
        assert row["BinStart"] == c["TimeGenerated"].strftime("%Y-%m-%dT%H:%M:%SZ") == result["TimeGenerated"]
    asked = azure_env.state["requests"]
    assert {"resource": "https://monitor.azure.com", "client_id": CLIENT_ID} in asked


def test_a_call_refused_as_too_large_is_split_and_delivered(ingestion: FakeServer) -> None:
    found = many_findings(700)
    limit = 600_000
    state(ingestion)["max_bytes"] = limit  # a service limit below the SDK's 1 MiB chunk
    sink(ingestion).deliver(found)

    calls = state(ingestion)["calls"]
    assert any(c.get("status") == 413 for c in calls)
    assert all(c["uncompressed"] <= limit for c in calls if c.get("status") == 204)
    ids = [r["FindingId"] for r in state(ingestion)["rows"]]
    assert sorted(ids) == sorted(f.id for f in found)  # each exactly once


def test_a_row_too_large_for_any_call_is_reported_and_the_rest_delivered(ingestion: FakeServer) -> None:
    found = findings()
    small = min(found, key=lambda f: len(json.dumps(finding_row(f, datetime.now(UTC)))))
    state(ingestion)["max_bytes"] = len(json.dumps([finding_row(small, datetime.now(UTC))])) + 10
    with pytest.raises(SinkError, match="413") as caught:
        sink(ingestion).deliver(found)
    assert small.id in caught.value.delivered
    assert caught.value.delivered == {r["FindingId"] for r in state(ingestion)["rows"]}
    assert len(caught.value.delivered) < len(found)
    # Each row too large alone is rejected (the runner parks it after a few runs), not left pending for ever.
    assert set(caught.value.rejected) == {f.id for f in found} - caught.value.delivered
    assert all("it cannot be delivered" in reason for reason in caught.value.rejected.values())


def test_429_waits_for_retry_after_then_delivers(ingestion: FakeServer) -> None:
    waits: list[float] = []
    state(ingestion).update(throttle=2, retry_after="3")
    sink(ingestion, waits).deliver(findings())
    assert waits == [3, 3]
    assert len(state(ingestion)["rows"]) == 7


def test_429_longer_than_the_bound_fails_with_the_wait(ingestion: FakeServer) -> None:
    waits: list[float] = []
    state(ingestion).update(throttle=1, retry_after="900")
    with pytest.raises(SinkError, match="asks to wait 900 s") as caught:
        sink(ingestion, waits, max_wait=30).deliver(findings())
    assert waits == []
    assert caught.value.delivered == frozenset()


def test_403_names_the_role_and_the_dcr(ingestion: FakeServer) -> None:
    state(ingestion)["forbidden"] = True
    with pytest.raises(SinkError, match="Monitoring Metrics Publisher") as caught:
        open_sink("loganalytics-table", settings_for(ingestion)).deliver(findings())
    assert DCR_ID in str(caught.value)
    assert caught.value.delivered == frozenset()


def test_unreachable_endpoint_is_reported_with_the_setting(pki: TestPki, azure_env: FakeServer) -> None:
    settings = Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:unused",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_INGESTION_ENDPOINT": "https://127.0.0.1:9",
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": DCR_ID,
        }
    )
    closed = LogsIngestionSink(
        settings.ingestion_endpoint,
        DCR_ID,
        credential=build_credential(settings),
        retry=RetrySettings(sleep=lambda _: None, attempts=2),
    )
    with pytest.raises(SinkError, match="DETECTOR_INGESTION_ENDPOINT") as caught:
        closed.deliver(findings())
    assert caught.value.delivered == frozenset()


def test_unknown_dcr_names_the_settings(ingestion: FakeServer) -> None:
    other = "dcr-ffffffffffffffffffffffffffffffff"
    with pytest.raises(SinkError, match="DETECTOR_INGESTION_DCR_IMMUTABLE_ID") as caught:
        open_sink("loganalytics-table", settings_for(ingestion, other)).deliver(findings())
    assert other in str(caught.value)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"DETECTOR_INGESTION_ENDPOINT.*required"):
        open_sink("loganalytics-table", Settings.from_env({"DETECTOR_SOURCE": "file:x"}))
    with pytest.raises(ConfigError, match="DETECTOR_INGESTION_DCR_IMMUTABLE_ID"):
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": "my-dcr"})
    with pytest.raises(ConfigError, match="DETECTOR_INGESTION_STREAM"):
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_INGESTION_STREAM": "IISPortScanFindings_CL"})


@pytest.mark.parametrize(
    ("endpoint", "scope"),
    [
        ("https://dce-1.westeurope-1.ingest.monitor.azure.com", "https://monitor.azure.com/.default"),
        ("https://dce-1.usgovvirginia-1.ingest.monitor.azure.us", "https://monitor.azure.us/.default"),
        ("https://dce-1.chinanorth3-1.ingest.monitor.azure.cn", "https://monitor.azure.cn/.default"),
    ],
)
def test_token_scope_follows_the_cloud_of_the_endpoint(endpoint: str, scope: str) -> None:
    assert monitor_scope(endpoint) == scope


# ---------------------------------------------------------------------------------------------------
# The alert rule over the table


def test_generated_schema_files_are_current() -> None:
    """infra/schema/ holds exactly what generate.py writes from the code and rules/ (no hand edits)."""
    spec = importlib.util.spec_from_file_location("schema_generate", SCHEMA_DIR / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    files, alert_rule_dir = generate.generated(), generate.ALERT_RULE_DIR
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run python infra/schema/generate.py"
    assert set(alert_rule_dir.glob("*.yaml")) == {p for p in files if p.parent == alert_rule_dir}


def projected(query: str) -> list[str]:
    project = query.rsplit("| project", 1)[1]
    return [name.strip() for name in project.replace("\n", " ").split(",")]


def test_one_alert_rule_per_rule_consistent_with_its_query_and_the_table() -> None:
    rules = load_rules(DEFAULT_RULES_DIR)
    document = alert_rules_document(rules)
    assert [r["ruleId"] for r in document["rules"]] == [r.id for r in rules]
    assert len({r["id"] for r in document["rules"]}) == len(rules)
    declared = {c.name for c in COLUMNS}
    for rule in rules:
        template = alert_rule_template(rule)
        columns = projected(template["query"])
        assert template["tactics"] == list(rule.tactics)
        assert template["relevantTechniques"] == list(rule.techniques)
        extended = set(columns) - declared
        mapped = [f["columnName"] for m in template["entityMappings"] for f in m["fieldMappings"]]
        assert set(mapped) == extended, "every entity column is extended from Result, and only those"
        assert [m["entityType"] for m in template["entityMappings"]] == [m.entity_type for m in rule.entity_mappings]
        for key, column in template["customDetails"].items():
            assert re.fullmatch(r"[a-zA-Z]+\w*", key)
            assert len(key) <= 20
            assert column in columns
        for field in ("alertDisplayNameFormat", "alertDescriptionFormat"):
            placeholders = re.findall(r"\{\{(\w+)\}\}", template["alertDetailsOverride"][field])
            assert len(set(placeholders)) <= 3
            assert set(placeholders) <= set(columns)
        grouping = template["incidentConfiguration"]["groupingConfiguration"]
        assert grouping["groupByCustomDetails"] == ["FindingId"]
        assert grouping["matchingMethod"] == "Selected"
        assert template["eventGroupingSettings"]["aggregationKind"] == "AlertPerResult"
        assert "let lookback = 10m;" in template["query"]
        assert template["queryFrequency"] == "5m"


def alert_query() -> str:
    return str(alert_rule_template(the_rule())["query"])


def load_rows_into_duckdb(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    types = {c.name: c.type for c in COLUMNS}
    table: dict[str, list[Any]] = {}
    for name, kind in types.items():
        values = [row.get(name) for row in rows]
        if kind == "datetime":
            values = [datetime.fromisoformat(v) if v else None for v in values]
        elif kind == "dynamic":
            values = [json.dumps(v) for v in values]
        table[name] = values
    findings_rows = pa.table(table)  # noqa: F841 - DuckDB reads it by name
    con = duckdb_kql.connect()
    con.execute("CREATE TABLE IISPortScanFindings_CL AS SELECT * FROM findings_rows")
    return con


def test_alert_query_alerts_once_per_new_finding_with_its_latest_row(ingestion: FakeServer) -> None:
    """Deliveries an hour ago, then a rerun now that re-delivers them and adds one new finding: the alert
    query raises exactly the new one. duckdb-kql has no ingestion_time(); the rows' TimeGenerated (the
    delivery time the sink writes) stands in for it."""
    now = datetime.now(UTC).replace(microsecond=0)
    held_back = "203.0.113.51"
    earlier = findings(lambda row: row["cIP"] != held_back)
    sink(ingestion, clock=now - timedelta(hours=1)).deliver(earlier)
    sink(ingestion, clock=now - timedelta(hours=1)).deliver(earlier)  # a retry: duplicate rows
    sink(ingestion, clock=now).deliver(findings())  # the rerun: all again, plus the held-back one

    con = load_rows_into_duckdb(state(ingestion)["rows"])
    query = alert_query().replace("ingestion_time()", "TimeGenerated")
    names = projected(query)
    result = [dict(zip(names, r, strict=True)) for r in duckdb_kql.kql(con, query).fetchall()]
    expected = [f for f in findings() if f.columns["cIP"] == held_back]
    assert [(r["FindingId"], r["IPCustomEntity"], r["Computer"]) for r in result] == [
        (f.id, held_back, f.columns["Computer"]) for f in expected
    ]
    assert [r["FindingTitle"] for r in result] == [f.title for f in expected]

    other_rule = "IISPortScanFindings_CL | where RuleId == 'not-this-rule' | count"
    assert duckdb_kql.kql(con, other_rule).fetchall() == [(0,)]

    rows_per_finding = "IISPortScanFindings_CL | summarize arg_max(TimeGenerated, *) by FindingId | count"
    assert duckdb_kql.kql(con, rows_per_finding).fetchall() == [(7,)]


def test_docs_example_row_is_current() -> None:
    """docs/sinks.md shows a real row; it must be what the code produces for the first fixture finding."""
    docs = ROOT / "docs" / "sinks.md"
    example = docs.read_text(encoding="utf-8").split("<!-- example-row -->", 2)[1]
    shown = json.loads(example.strip().removeprefix("```json").removesuffix("```"))
    expected = finding_row(findings()[2], datetime(2026, 11, 27, 0, 31, 2, tzinfo=UTC))
    assert shown == expected
