"""The sentinel sink: the real ManagedIdentityCredential and azure-core pipeline against the fake ARM API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import duckdb_kql
import pytest

from detector.config import Settings
from detector.errors import ConfigError, SinkError
from detector.kql import string_literal as kql_string
from detector.sinks import open_sink
from detector.sinks.http_delivery import RetrySettings
from detector.sinks.sentinel import API_VERSION, SentinelSink, evidence_query
from tests.fakes.arm import ArmHandler, analyst_edit
from tests.fakes.server import FakeServer, serve
from tests.sink_support import CLIENT_ID, WORKSPACE, bin_of, findings, fixture_rows, late_rows_of

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki


@pytest.fixture
def arm(pki: TestPki, azure_env: FakeServer) -> Iterator[FakeServer]:
    with serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}) as server:
        server.state["audience"] = server.url
        yield server


def state(server: FakeServer) -> dict[str, Any]:
    return server.state


def settings_for(arm: FakeServer, workspace: str = WORKSPACE) -> Settings:
    return Settings.from_env(
        {
            "DETECTOR_SOURCE": "file:unused",
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_ARM_ENDPOINT": arm.url,
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": workspace,
        }
    )


def incident(arm: FakeServer, finding_id: str) -> dict[str, Any]:
    found: dict[str, Any] = state(arm)["incidents"][(WORKSPACE.lower(), finding_id)]
    return found


def writes(arm: FakeServer) -> list[dict[str, Any]]:
    return [r for r in state(arm)["requests"] if r["method"] == "PUT"]


def test_one_incident_per_finding_with_the_evidence(arm: FakeServer, azure_env: FakeServer) -> None:
    found = findings()
    open_sink("sentinel", settings_for(arm)).deliver(found)

    assert len(state(arm)["incidents"]) == len(found) == 7
    for finding in found:
        props = incident(arm, finding.id)["properties"]
        c = finding.columns
        assert props["status"] == "New"
        assert props["severity"] == "Medium"
        assert c["cIP"] in props["title"]
        assert c["Computer"] in props["title"]
        assert {label["labelName"] for label in props["labels"]} >= {"Tactic: InitialAccess", "Technique: T1190"}
        start, end = bin_of(finding)
        assert props["firstActivityTimeUtc"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert props["lastActivityTimeUtc"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert f"reached {c['portCount']} distinct ports" in props["description"]
        assert f"in {c['ConnectionsCount']} connections" in props["description"]
        assert evidence_query(finding) in props["description"]
    # The real credential asked the identity endpoint for our user-assigned identity and the ARM scope.
    asked = azure_env.state["requests"]
    assert {"resource": arm.url, "client_id": CLIENT_ID} in asked  # scope <ARM endpoint>/.default, as a resource


def test_evidence_query_returns_exactly_the_rows_of_the_finding() -> None:
    """Run each incident's KQL over the fixture rows (duckdb-kql) and compare with the finding."""
    import pyarrow as pa

    columns = ["TimeGenerated", "cIP", "Computer", "sIP", "sPort", "csMethod", "csUriQuery", "csUserName", "csUserAgent"]
    rows = fixture_rows()
    iis_rows = pa.table({c: [row.get(c) for row in rows] for c in columns})  # noqa: F841 - DuckDB reads it by name
    con = duckdb_kql.connect()
    # The columns the rule does not read are not in the fixture rows; the query projects them, so add them empty.
    con.execute(
        "CREATE TABLE W3CIISLog AS SELECT *, NULL::VARCHAR AS csUriStem, NULL::VARCHAR AS scStatus, "
        "NULL::VARCHAR AS scSubStatus, NULL::VARCHAR AS scWin32Status FROM iis_rows"
    )
    for finding in findings():
        evidence = duckdb_kql.kql(con, evidence_query(finding)).fetchall()
        assert len(evidence) == finding.columns["ConnectionsCount"]
        ports = {r[4] for r in evidence if r[4] is not None}  # makeset skips nulls and keeps at most 128
        assert min(len(ports), 128) == finding.columns["portCount"]


def test_second_run_creates_nothing_and_keeps_the_analysts_changes(arm: FakeServer) -> None:
    found = findings()
    open_sink("sentinel", settings_for(arm)).deliver(found)
    closed, taken = found[0].id, found[1].id
    owner = {
        "objectId": "2f4c1b9e-0000-4000-8000-000000000001",
        "email": "ana@contoso.com",
        "assignedTo": "Ana",
        "userPrincipalName": "ana@contoso.com",
    }
    analyst_edit(
        state(arm),
        WORKSPACE,
        closed,
        status="Closed",
        classification="TruePositive",
        classificationReason="SuspiciousActivity",
        owner=owner,
    )
    analyst_edit(state(arm), WORKSPACE, taken, status="Active", owner=owner, severity="High")
    before = {key: dict(value) for key, value in state(arm)["incidents"].items()}
    puts_before = len(writes(arm))

    open_sink("sentinel", settings_for(arm)).deliver(found)  # the rerun, with a fresh sink as a new run has

    assert len(writes(arm)) == puts_before  # read only: nothing to write
    assert state(arm)["incidents"] == before
    assert incident(arm, closed)["properties"]["status"] == "Closed"
    assert incident(arm, closed)["properties"]["classification"] == "TruePositive"
    assert incident(arm, taken)["properties"]["owner"]["assignedTo"] == "Ana"
    assert incident(arm, taken)["properties"]["severity"] == "High"


def test_late_rows_update_the_evidence_only_and_comment_once(arm: FakeServer) -> None:
    early = findings(late_rows_of("203.0.113.9", 6))  # the 40-port scan, 6 rows still in transit
    complete = findings()
    (grown,) = [f for f in complete if f.columns["cIP"] == "203.0.113.9"]
    (partial,) = [f for f in early if f.id == grown.id]
    assert partial.columns["portCount"] < grown.columns["portCount"]

    open_sink("sentinel", settings_for(arm)).deliver([partial])
    analyst_edit(state(arm), WORKSPACE, grown.id, status="Closed", classification="BenignPositive", title="Known scanner")
    open_sink("sentinel", settings_for(arm)).deliver([grown])
    open_sink("sentinel", settings_for(arm)).deliver([grown])  # a retry of the same run: no second comment

    props = incident(arm, grown.id)["properties"]
    assert f"reached {grown.columns['portCount']} distinct ports" in props["description"]
    assert (props["status"], props["classification"], props["title"]) == ("Closed", "BenignPositive", "Known scanner")
    comments = [c for key, c in state(arm)["comments"].items() if key[1] == grown.id]
    assert len(comments) == 1
    assert f"({grown.columns['portCount']} ports)" in comments[0]["properties"]["message"]
    update = [w for w in writes(arm) if w["path"].endswith(grown.id) and w["if_match"]]
    assert len(update) == 1
    assert update[0]["body"]["etag"] == update[0]["if_match"]


@pytest.mark.parametrize("conflict_status", [409, 412])
def test_etag_conflict_rereads_and_keeps_the_concurrent_edit(arm: FakeServer, conflict_status: int) -> None:
    early = findings(late_rows_of("203.0.113.9", 6))
    (grown,) = [f for f in findings() if f.columns["cIP"] == "203.0.113.9"]
    open_sink("sentinel", settings_for(arm)).deliver([f for f in early if f.id == grown.id])
    s = state(arm)
    s["conflict_status"] = conflict_status
    # The analyst assigns the incident between the detector's read and its write.
    s["before_update"] = lambda: analyst_edit(s, WORKSPACE, grown.id, status="Active", owner={"assignedTo": "Bo"})

    open_sink("sentinel", settings_for(arm)).deliver([grown])

    props = incident(arm, grown.id)["properties"]
    assert props["owner"]["assignedTo"] == "Bo"
    assert props["status"] == "Active"
    assert f"reached {grown.columns['portCount']} distinct ports" in props["description"]
    gets = [r for r in s["requests"] if r["method"] == "GET" and r["path"].endswith(grown.id)]
    assert len(gets) == 3  # first delivery, then the read before the conflict and the re-read after it


def test_403_names_the_role_and_delivers_nothing(arm: FakeServer) -> None:
    state(arm)["forbidden"] = True
    with pytest.raises(SinkError) as caught:
        open_sink("sentinel", settings_for(arm)).deliver(findings())
    message = str(caught.value)
    assert "IIS detector incident writer" in message
    assert "Microsoft.SecurityInsights/incidents/comments/write" in message
    assert f"on the workspace {WORKSPACE}" in message
    assert "Do not grant Microsoft Sentinel Responder" in message
    assert caught.value.delivered == frozenset()
    assert len(state(arm)["requests"]) == 1  # stops at the first refusal instead of hammering the API


def test_401_points_at_the_identity_and_the_cloud(arm: FakeServer) -> None:
    state(arm)["audience"] = "https://management.usgovcloudapi.net"  # the token is for another audience
    with pytest.raises(SinkError, match="401 Unauthorized") as caught:
        open_sink("sentinel", settings_for(arm)).deliver(findings())
    assert "AZURE_CLIENT_ID" in str(caught.value)
    assert "DETECTOR_ARM_ENDPOINT" in str(caught.value)


def test_404_names_the_workspace_setting(arm: FakeServer) -> None:
    wrong = WORKSPACE.replace("law-soc", "law-typo")
    with pytest.raises(SinkError, match="DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID") as caught:
        open_sink("sentinel", settings_for(arm, wrong)).deliver(findings())
    assert "law-typo" in str(caught.value)


def sink_with_recorded_waits(arm: FakeServer, waits: list[float], max_wait: float = 60) -> SentinelSink:
    settings = settings_for(arm)
    from detector.identity import build_credential

    return SentinelSink(
        WORKSPACE,
        credential=build_credential(settings),
        arm_endpoint=arm.url,
        retry=RetrySettings(sleep=waits.append, max_wait=max_wait),
    )


def test_429_waits_as_long_as_retry_after_says(arm: FakeServer) -> None:
    waits: list[float] = []
    state(arm).update(throttle=2, retry_after="7")
    sink_with_recorded_waits(arm, waits).deliver(findings()[:2])
    assert waits == [7, 7]
    assert len(state(arm)["incidents"]) == 2


def test_429_beyond_the_bound_fails_fast_and_says_how_long(arm: FakeServer) -> None:
    waits: list[float] = []
    state(arm).update(throttle=1, retry_after="600")
    with pytest.raises(SinkError, match="asks to wait 600 s") as caught:
        sink_with_recorded_waits(arm, waits, max_wait=30).deliver(findings())
    assert waits == []  # not waited for: the run would outlive its timer
    assert caught.value.delivered == frozenset()
    assert "7 of 7 findings not delivered" in str(caught.value)
    assert len(state(arm)["requests"]) == 1


def test_a_bad_finding_does_not_stop_the_others(arm: FakeServer) -> None:
    found = findings()
    broken = found[3]
    object.__setattr__(broken, "severity", "Severe")  # not a Sentinel severity: the API answers 400
    with pytest.raises(SinkError, match="1 of 7 findings not delivered") as caught:
        open_sink("sentinel", settings_for(arm)).deliver(found)
    assert caught.value.delivered == frozenset(f.id for f in found) - {broken.id}
    assert list(caught.value.refused) == [broken.id] and "400" in caught.value.refused[broken.id]
    assert len(state(arm)["incidents"]) == 6


def test_requests_use_the_stable_api_version(arm: FakeServer) -> None:
    open_sink("sentinel", settings_for(arm)).deliver(findings()[:1])
    assert API_VERSION == "2025-09-01"
    assert all(r["path"].startswith(WORKSPACE) for r in state(arm)["requests"])


def test_settings_are_checked_when_the_sink_is_opened() -> None:
    with pytest.raises(ConfigError, match=r"DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID.*required"):
        open_sink("sentinel", Settings.from_env({"DETECTOR_SOURCE": "file:x"}))
    with pytest.raises(ConfigError, match="not a workspace resource id"):
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": "law-soc"})
    with pytest.raises(ConfigError, match="DETECTOR_ARM_ENDPOINT"):
        Settings.from_env({"DETECTOR_SOURCE": "file:x", "DETECTOR_ARM_ENDPOINT": "http://management.azure.com"})


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("web01.contoso.com", '"web01.contoso.com"'),
        ('a"b', '"a\\"b"'),
        ("C:\\iis\\", '"C:\\\\iis\\\\"'),
        ("line\nbreak\ttab", '"line\\nbreak\\ttab"'),
        ("bell\x07", "unicode_codepoints_to_string(dynamic([98, 101, 108, 108, 7]))"),
    ],
)
def test_kql_string_literals(value: str, literal: str) -> None:
    assert kql_string(value) == literal


@pytest.mark.parametrize("value", ["plain", 'quo"te', "back\\slash", "new\nline", "tab\tand 'single'"])
def test_kql_string_literals_evaluate_to_the_value(value: str) -> None:
    con = duckdb_kql.connect()
    assert duckdb_kql.kql(con, f"print v = {kql_string(value)}").fetchall() == [(value,)]


def test_a_value_the_state_store_shortened_still_finds_its_rows_and_a_forged_one_its_own() -> None:
    """A stored copy's value shortened to fit a table entity keeps the whole value's SHA-256, which the
    evidence condition tests; a value an attacker wrote to look shortened still finds the rows it is in."""
    import pyarrow as pa

    from detector.models import shortened_text
    from detector.sinks.sentinel import key_condition

    real = "Mozilla/" + "A" * 5000
    forged = "curl…[shortened to fit the state store; sha256 " + "0" * 64 + "]"
    rows = pa.table({"csUserAgent": [real, forged, "other", real]})  # noqa: F841 - DuckDB reads it by name
    con = duckdb_kql.connect()
    con.execute("CREATE TABLE W3CIISLog AS SELECT * FROM rows")
    for value, count in ((shortened_text(real, 100), 2), (forged, 1), (real, 2)):
        query = f"W3CIISLog | where {key_condition('csUserAgent', value)} | count"
        assert duckdb_kql.kql(con, query).fetchall() == [(count,)], value[:60]
