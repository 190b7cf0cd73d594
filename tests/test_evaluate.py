"""The engine and the port-scan logic: result rows, metadata, stable ids, entities."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest

from detector.evaluate import evaluate
from detector.kql import format_datetime
from detector.logic.high_port_count import OUTPUT_COLUMNS
from detector.models import Row, Window
from detector.sources import ReadRequest
from detector.w3ciislog import STATUS_FRIENDLY_ELSE, WIN32_FRIENDLY_ELSE, coerce_row
from tests.helpers import DAY, FILES, RULE, open_for_test

T0 = DAY.start + timedelta(hours=10)


def rows(count: int, moment: Any = T0, **overrides: Any) -> list[Row]:
    base = {"TimeGenerated": moment, "cIP": "203.0.113.9", "Computer": "web01", "sIP": "10.0.0.4"}
    return [
        coerce_row({**base, "sPort": 8000 + i, **overrides}, RULE.logic.columns, RULE.logic.required_columns, "test")
        for i in range(count)
    ]


def test_result_has_the_18_kql_columns_in_order_and_metadata() -> None:
    (finding,) = evaluate(RULE, rows(30), DAY)
    assert tuple(finding.columns) == OUTPUT_COLUMNS
    assert len(OUTPUT_COLUMNS) == 18
    assert finding.columns["timestamp"] == finding.columns["TimeGenerated"] == T0
    assert finding.columns["IPCustomEntity"] == "203.0.113.9"
    assert (finding.rule_id, finding.severity, finding.tactics, finding.techniques) == (
        RULE.id,
        "Medium",
        ("InitialAccess",),
        ("T1190",),
    )
    assert finding.window == DAY
    assert [(e.type, dict(e.fields)) for e in finding.entities] == [
        ("IP", {"Address": "203.0.113.9"}),
        ("Host", {"FullName": "web01"}),
    ]
    out = finding.to_json()
    assert list(out)[:18] == list(OUTPUT_COLUMNS)
    assert out["TimeGenerated"] == "2026-11-26T10:00:00Z"
    assert out["FindingId"] == finding.id
    assert out["WindowStart"] == "2026-11-26T00:00:00Z"


def test_stable_id_depends_only_on_rule_bin_and_group() -> None:
    (a,) = evaluate(RULE, rows(30), DAY)
    (b,) = evaluate(RULE, rows(40, moment=T0 + timedelta(minutes=9)), Window(T0, T0 + timedelta(hours=1)))
    (c,) = evaluate(RULE, rows(30, Computer="web02"), DAY)
    (d,) = evaluate(RULE, rows(30, moment=T0 + timedelta(minutes=10)), DAY)
    assert a.id == b.id  # same bin and group, other rows and window
    assert len({a.id, c.id, d.id}) == 3


def test_missing_strings_are_empty_and_fall_to_the_else_texts() -> None:
    (finding,) = evaluate(RULE, rows(30), DAY)
    columns = finding.columns
    assert columns["set_scStatusFull"] == ["."]  # strcat("", ".", "")
    assert columns["set_scStatusFull_Friendly"] == [STATUS_FRIENDLY_ELSE]
    # tohex(tolong("")) is null, "" in a string column; make_set skips "" like null.
    assert columns["set_scWin32Status_Hex"] == []
    assert columns["set_scWin32Status_Friendly"] == [WIN32_FRIENDLY_ELSE]
    assert columns["set_csUserName"] == []
    assert columns["set_sSiteName"] == []
    assert columns["set_decodedUriQuery"] == []


def test_sets_skip_empty_strings_but_keep_dash() -> None:
    data = rows(30)
    for i, row in enumerate(data):
        row["csUserName"] = ["-", "", None][i % 3]
        row["sSiteName"] = ["", "-"][i % 2]
    (finding,) = evaluate(RULE, data, DAY)
    assert finding.columns["set_csUserName"] == ["-"]
    assert finding.columns["set_sSiteName"] == ["-"]


def test_case_tables_use_exact_and_case_insensitive_matching() -> None:
    data = rows(30, scStatus="401", scSubStatus="1", scWin32Status="2148074252")
    data += rows(1, scStatus="403", scSubStatus="4", scWin32Status="1909")
    (finding,) = evaluate(RULE, data, DAY)
    assert finding.columns["set_scStatusFull_Friendly"] == ["Logon failed.", "SSL required."]
    # "8009030C" is upper-case in the rule; it matches tohex's lower-case output through =~.
    assert finding.columns["set_scWin32Status_Friendly"] == [
        "SEC_E_LOGON_DENIED",
        "The referenced account is currently locked out and cannot be logged on to.",
    ]
    assert finding.columns["set_scWin32Status_Hex"] == ["775", "8009030c"]


def test_results_are_ordered_by_port_count_descending() -> None:
    data = rows(35, cIP="a") + rows(128, cIP="b") + rows(30, cIP="c")
    findings = evaluate(RULE, data, DAY)
    assert [f.columns["portCount"] for f in findings] == [128, 35, 30]


def test_result_does_not_depend_on_row_order() -> None:
    data = rows(200) + rows(50, cIP="x", csUserAgent="agent")
    for i, row in enumerate(data):
        row["csUserAgent"] = f"ua{i % 150}"
    baseline = [f.to_json() for f in evaluate(RULE, data, DAY)]
    shuffled = list(data)
    random.Random(7).shuffle(shuffled)
    assert [f.to_json() for f in evaluate(RULE, shuffled, DAY)] == baseline


def test_every_set_is_capped_at_128() -> None:
    data = rows(300)
    for i, row in enumerate(data):
        row["csUserAgent"] = f"agent-{i:03d}"
    (finding,) = evaluate(RULE, data, DAY)
    assert finding.columns["portCount"] == 128
    assert len(finding.columns["set_csUserAgent"]) == 128
    assert finding.columns["set_csUserAgent"][0] == "agent-000"
    assert finding.columns["ConnectionsCount"] == 300


def test_rows_outside_the_window_are_ignored_even_if_a_source_returns_them() -> None:
    assert evaluate(RULE, rows(30, moment=DAY.end), DAY) == []
    assert evaluate(RULE, rows(30, moment=DAY.start - timedelta(microseconds=1)), DAY) == []


@pytest.mark.parametrize(
    ("spec", "computer"),
    [
        (f"file:{FILES / 'w3ciislog.jsonl'}", ""),
        (f"file:{FILES / 'w3ciislog_array.json'}", ""),
        (f"file:{FILES / 'la_response.json'}", ""),
        (f"iis:{FILES / 'iis'}", "web01.contoso.com"),
    ],
)
def test_fixture_sets_are_the_planted_ones(spec: str, computer: str) -> None:
    """url_decode and make_set over the fixtures' odd queries and empty fields, against the generator's oracle."""
    request = ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns)
    findings = evaluate(RULE, list(open_for_test(spec, computer).read(request)), DAY)
    by_key = {(format_datetime(f.columns["TimeGenerated"]), *RULE.logic.group_key(f.columns)[1:]): f for f in findings}
    expected_sets = json.loads((FILES / "expected_sets.json").read_text(encoding="utf-8"))
    assert expected_sets
    for expected in expected_sets:
        columns = by_key[(expected["TimeGenerated"], expected["cIP"], expected["Computer"], expected["sIP"])].columns
        for name, values in expected.items():
            if name.startswith("set_"):
                assert columns[name] == values, name
