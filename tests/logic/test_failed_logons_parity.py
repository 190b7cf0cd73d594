"""Parity of the two failed-logon rules (19e01883 by client IP, 884c4957 by user) with their own KQL.

Each rule's own query text, from its rule file, runs in an independent KQL engine (duckdb-kql) over the
same rows, and every output column is compared: names, order, group keys, counts, sets, and the
entity columns the user rule derives with split/indexof/substring/iff. duckdb-kql runs the query with
only these narrow rewrites, each for a function it lacks or a setting of ours:
- `tohex(tolong(scWin32Status))` reads a column precomputed with our kql.tohex/kql.tolong (unit-tested in
  test_kql.py); the case() tables that read it run in duckdb-kql.
- `url_decode(csUriQuery)` becomes `csUriQuery`, and our kql.url_decode is applied to each value of
  their set_decodedUriQuery afterwards: make_set(f(x)) is {f(v) : v in make_set(x)} for a per-value f,
  so the rewrites that happen before url_decode in the user rule (startswith, split, iff, strcat) are
  still checked by the engine's own output.
- deprecated `makeset(x)` / its cap become `make_set(x, 128)`; duckdb-kql does not enforce the cap, so a
  set of more than 128 values is compared as "ours is 128 of theirs".
- whether make_set keeps "" is undocumented in Kusto; our kql.CappedSet decides it (test_kql.py) and the
  same decision is applied to duckdb-kql's sets, which keep "".
- the `let` values are inlined (and lowered in the property test); the window becomes a `where` on
  TimeGenerated, as Sentinel applies it as the query's time range.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb_kql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.evaluate import evaluate
from detector.kql import CappedSet, format_datetime, tohex, tolong, url_decode
from detector.logic.failed_logons import FailedLogonCount
from detector.models import Row, Window
from detector.rules import DEFAULT_RULES_DIR, Rule, load_rule
from detector.sources import ReadRequest, open_source
from tests.helpers import DAY, FILES

BY_CLIENT_IP = load_rule(DEFAULT_RULES_DIR / "high_failed_logon_count_by_client_ip.yaml")
BY_USER = load_rule(DEFAULT_RULES_DIR / "high_failed_logon_count_by_user.yaml")
FIXTURE = FILES / "w3ciislog_logons.jsonl"
COLUMNS = (
    "TimeGenerated",
    "cIP",
    "Computer",
    "sIP",
    "sPort",
    "csUriQuery",
    "csUserName",
    "sSiteName",
    "csUserAgent",
    "csMethod",
    "scStatus",
    "scSubStatus",
    "scWin32Status",
)


def _make_set_skips_empty() -> bool:
    probe: CappedSet[str] = CappedSet(4)
    probe.add("")
    return len(probe) == 0


def rewritten_query(rule: Rule, window: Window, threshold: int | None = None) -> str:
    query = rule.query.strip("\n")
    lets = dict(re.findall(r"^let (\w+) = ([^;]+);\n", query, flags=re.MULTILINE))
    assert set(lets) == {"timeBin", "failedThreshold"}, lets
    if threshold is not None:
        lets["failedThreshold"] = str(threshold)
    query = re.sub(r"^let \w+ = [^;]+;\n", "", query, flags=re.MULTILINE)
    for name, value in lets.items():
        query = re.sub(rf"\b{name}\b", value, query)
    assert "tohex(tolong(scWin32Status))" in query and "url_decode(csUriQuery)" in query
    query = query.replace("tohex(tolong(scWin32Status))", "scWin32Status_Hex_")
    query = query.replace("url_decode(csUriQuery)", "csUriQuery")
    query = re.sub(r"\bmakeset\((\w+)\)", r"make_set(\1, 128)", query)
    where = (
        f"| where TimeGenerated >= datetime({format_datetime(window.start)}) "
        f"and TimeGenerated < datetime({format_datetime(window.end)})\n"
    )
    return query.replace("W3CIISLog\n", "W3CIISLog\n" + where, 1)


def kql_results(rule: Rule, rows: list[Row], window: Window, threshold: int | None = None) -> list[dict[str, Any]]:
    connection = duckdb_kql.connect()
    connection.sql(
        "CREATE TABLE W3CIISLog (TimeGenerated TIMESTAMPTZ, cIP VARCHAR, Computer VARCHAR, sIP VARCHAR, sPort INTEGER, "
        "csUriQuery VARCHAR, csUserName VARCHAR, sSiteName VARCHAR, csUserAgent VARCHAR, csMethod VARCHAR, "
        "scStatus VARCHAR, scSubStatus VARCHAR, scWin32Status VARCHAR, scWin32Status_Hex_ VARCHAR)"
    )
    if rows:
        connection.executemany(
            "INSERT INTO W3CIISLog VALUES (" + ",".join("?" * 14) + ")",
            [[r[c] for c in COLUMNS] + [tohex(tolong(r["scWin32Status"]))] for r in rows],
        )
    connection.execute("SET TimeZone='UTC'")  # what duckdb_kql.kql() sets before it runs a query
    result = connection.sql(translated(rewritten_query(rule, window, threshold)))
    return [dict(zip(result.columns, values, strict=True)) for values in result.fetchall()]


@functools.lru_cache(maxsize=64)
def translated(query: str) -> str:
    """duckdb-kql's SQL for a query over the W3CIISLog columns; cached, as translating takes ~0.7 s."""
    sql = duckdb_kql.to_sql(query, schema={"W3CIISLog": [*COLUMNS, "scWin32Status_Hex_"]})
    assert not sql.udfs and not sql.parameters
    return str(sql)


def _moment(value: datetime) -> str:
    return format_datetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)


def assert_same_results(rule: Rule, ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]]) -> None:
    actor = rule.logic.output_columns[1]  # cIP or csUserName: the first group key after the bin
    assert isinstance(rule.logic, FailedLogonCount)
    max_set_size = rule.logic.max_set_size

    def key(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
        return (_moment(row["TimeGenerated"]), row[actor], row["Computer"], row["sIP"])

    skips_empty = _make_set_skips_empty()
    theirs_by_key = {key(r): r for r in theirs}
    assert len(theirs_by_key) == len(theirs)
    assert sorted(theirs_by_key) == sorted(key(r) for r in ours)
    for mine in ours:
        other = theirs_by_key[key(mine)]
        assert list(mine) == list(other) == list(rule.logic.output_columns), "KQL's output columns, names and order"
        for column, value in mine.items():
            their_value = other[column]
            if column.startswith("set_"):
                values = their_value if isinstance(their_value, list) else json.loads(their_value)
                if column == "set_decodedUriQuery":
                    values = list(dict.fromkeys(url_decode(v) for v in values))
                if skips_empty:
                    values = [v for v in values if v != ""]
                if len(values) <= max_set_size:
                    assert sorted(value, key=str) == sorted(values, key=str), column
                else:
                    assert len(value) == max_set_size, column
                    assert set(value) <= set(values), column
            elif isinstance(value, datetime):
                assert _moment(value) == _moment(their_value), column
            else:
                assert value == their_value, column
    counts = [r["FailedConnectionsCount"] for r in ours]
    assert counts == sorted(counts, reverse=True), "order by FailedConnectionsCount is descending"


def fixture_rows(rule: Rule, window: Window) -> list[Row]:
    return list(open_source(f"file:{FIXTURE}").read(ReadRequest(window, rule.logic.columns, rule.logic.required_columns)))


def all_fixture_rows() -> list[Row]:
    everything = Window(DAY.start.replace(year=2000), DAY.end.replace(year=2100))
    return list(open_source(f"file:{FIXTURE}").read(ReadRequest(everything, COLUMNS, ("TimeGenerated",))))


@pytest.mark.parametrize("rule", [BY_CLIENT_IP, BY_USER], ids=["by-client-ip", "by-user"])
def test_the_fixture_gives_the_same_results_as_the_rules_own_kql(rule: Rule) -> None:
    # The engine gets every row of the file, so the query's own filter must do the windowing.
    theirs = kql_results(rule, all_fixture_rows(), DAY)
    ours = [f.columns for f in evaluate(rule, fixture_rows(rule, DAY), DAY)]
    assert len(ours) == len(theirs) > 0
    assert_same_results(rule, ours, theirs)


@pytest.mark.parametrize("rule", [BY_CLIENT_IP, BY_USER], ids=["by-client-ip", "by-user"])
def test_the_fixture_gives_the_planted_findings(rule: Rule) -> None:
    """The oracle written by generate_logons.py from how the scenarios were planted."""
    planted = json.loads((FILES / "expected_logon_findings.json").read_text(encoding="utf-8"))
    planted = [p for p in planted if p["RuleId"] == rule.id]
    actor = rule.logic.output_columns[1]
    found = evaluate(rule, fixture_rows(rule, DAY), DAY)
    summary = [
        {
            "RuleId": f.rule_id,
            "TimeGenerated": format_datetime(f.columns["TimeGenerated"]),
            actor: f.columns[actor],
            "Computer": f.columns["Computer"],
            "sIP": f.columns["sIP"],
            "FailedConnectionsCount": f.columns["FailedConnectionsCount"],
        }
        for f in found
    ]
    assert summary == [{k: v for k, v in p.items() if k != "setSizes"} for p in planted]
    for finding, plant in zip(found, planted, strict=True):
        for column, size in plant.get("setSizes", {}).items():
            assert len(finding.columns[column]) == size


def test_user_rule_entities_follow_sentinels_mapping() -> None:
    findings = {f.columns["csUserName"]: f for f in evaluate(BY_USER, fixture_rows(BY_USER, DAY), DAY)}
    alice = {e.type: dict(e.fields) for e in findings["alice@contoso.com"].entities}
    assert alice == {
        "Account": {"FullName": "alice@contoso.com", "Name": "alice", "UPNSuffix": "contoso.com"},
        "Host": {"FullName": "mail01.contoso.com", "HostName": "mail01", "NTDomain": "contoso.com"},
    }
    bob = {e.type: dict(e.fields) for e in findings["CONTOSO\\bob"].entities}
    # No "@": the UPN suffix is "", and an empty identifier is left out of the entity.
    assert bob == {
        "Account": {"FullName": "CONTOSO\\bob", "Name": "CONTOSO\\bob"},
        "Host": {"FullName": "MAIL02", "HostName": "MAIL02", "NTDomain": "MAIL02"},
    }
    eve = findings["eve@evil@contoso.com"].columns
    assert (eve["AccountName"], eve["AccountUPNSuffix"], eve["HostName"], eve["DomainIndex"], eve["HostNameDomain"]) == (
        "eve",
        "evil",
        "web03",
        5,
        "",
    )


def test_client_ip_rule_entities_follow_sentinels_mapping() -> None:
    finding = evaluate(BY_CLIENT_IP, fixture_rows(BY_CLIENT_IP, DAY), DAY)[0]
    assert [(e.type, dict(e.fields)) for e in finding.entities] == [
        ("Host", {"FullName": finding.columns["Computer"]}),
        ("IP", {"Address": finding.columns["cIP"]}),
    ]


# ---- property: random rows, both engines agree ---------------------------------------------------
_BASE = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
_WINDOW = Window(_BASE, _BASE + timedelta(minutes=30))
QUERY_EDGES = [
    "-",
    "",
    "a=1",
    "q=a+b%20c",
    "x=%zz",
    "MailboxId=m1&CorrelationID=1",
    "MailboxId=m1&CorrelationID=2&x",
    "mailboxid=M1&id=3",
    "MAILBOXID=m1",
    "MailboxId=",
    "MailboxId",
    "&MailboxId=m1",
    " MailboxId=m1&a",
    "X-ARR-CACHE-HIT=0&X-ARR-LOG-ID=7&a=b",
    "x-arr-cache-hit=1&&z",
    "X-ARR-CACHE-HIT=1",
    "X-ARR-CACHE-HIT=&",
    "MailboxId=m2&X-ARR-CACHE-HIT=1",
    "X-ARR-CACHE-HIT=1&MailboxId=m3&c",
    "MailboxId=X-ARR-CACHE-HIT=1&b",
]
USER_EDGES = ["-", "", "alice@contoso.com", "Alice@contoso.com", "bob", "a@b@c", "@x", "x@", "@", "CONTOSO\\c"]
COMPUTER_EDGES = ["web01.contoso.com", "WEB02", "web03.", ".hidden", "", "a.b.c", "."]
STATUS_EDGES = ["401", "403", "200", "404", "", "401 ", "4010", "-"]


_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "TimeGenerated": st.integers(-120, 35 * 60).map(lambda s: _BASE + timedelta(seconds=s)),
            "cIP": st.sampled_from(["203.0.113.7", "2001:db8::1", ""]),
            "Computer": st.sampled_from(COMPUTER_EDGES),
            "sIP": st.just("10.0.0.4"),
            "sPort": st.sampled_from([443, 80, None]),
            "csUriQuery": st.sampled_from(QUERY_EDGES),
            "csUserName": st.sampled_from(USER_EDGES),
            "sSiteName": st.sampled_from(["Default Web Site", ""]),
            "csUserAgent": st.sampled_from(["curl/8.4.0", "-", ""]),
            "csMethod": st.sampled_from(["GET", "POST"]),
            "scStatus": st.sampled_from(["401", "403", *STATUS_EDGES]),
            "scSubStatus": st.sampled_from(["0", "1", "2", ""]),
            "scWin32Status": st.sampled_from(["1326", "5", "-", "", "2148074252", "-1"]),
        }
    ),
    min_size=1,
    max_size=80,
)


def _lowered(rule: Rule, threshold: int) -> Rule:
    parameters = {**rule.parameters, "failedThreshold": threshold}
    return dataclasses.replace(rule, logic=type(rule.logic).from_parameters(parameters))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_ROWS, threshold=st.integers(1, 3), by_user=st.booleans())
def test_random_rows_give_the_same_results_as_the_rules_own_kql(rows: list[Row], threshold: int, by_user: bool) -> None:
    rule = _lowered(BY_USER if by_user else BY_CLIENT_IP, threshold)
    theirs = kql_results(rule, rows, _WINDOW, threshold)
    ours = [f.columns for f in evaluate(rule, rows, _WINDOW)]
    assert len(ours) == len(theirs)
    assert_same_results(rule, ours, theirs)


@pytest.mark.parametrize("rule", [BY_CLIENT_IP, BY_USER], ids=["by-client-ip", "by-user"])
def test_every_edge_case_gives_the_same_results_as_the_rules_own_kql(rule: Rule) -> None:
    """Every query, user name, computer and status edge case at once, with threshold 1 so every group fires."""
    rows: list[Row] = []
    for i, (query, user, computer, status) in enumerate(
        (q, u, c, s) for q in QUERY_EDGES for u in USER_EDGES for c in COMPUTER_EDGES for s in STATUS_EDGES[:3]
    ):
        rows.append(
            {
                "TimeGenerated": _BASE + timedelta(seconds=i % 1800),
                "cIP": ["203.0.113.7", "2001:db8::1", ""][i % 3],
                "Computer": computer,
                "sIP": "10.0.0.4",
                "sPort": [443, None][i % 2],
                "csUriQuery": query,
                "csUserName": user,
                "sSiteName": "",
                "csUserAgent": "curl/8.4.0",
                "csMethod": "GET",
                "scStatus": status,
                "scSubStatus": str(i % 3),
                "scWin32Status": ["1326", "-", "2148074252"][i % 3],
            }
        )
    lowered = _lowered(rule, 1)
    theirs = kql_results(lowered, rows, _WINDOW, 1)
    ours = [f.columns for f in evaluate(lowered, rows, _WINDOW)]
    assert len(ours) == len(theirs) > 100
    assert_same_results(lowered, ours, theirs)
