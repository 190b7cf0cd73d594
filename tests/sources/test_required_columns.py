"""A line missing a column the rule requires, or holding a value of its type no reader can type, is
skipped by the plain read whether or not it could be a finding's: the pushed-down read must skip it too,
so both count the same rows read and lines skipped (found by an outside hunt: a rule that only filters
read few columns of its own in the first pass, and let such a line through when it failed the filter).

Every bundled rule, every file shape, each way a required column goes bad, on a line that passes the
rule's filter and on one that fails it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detector.kql import parse_datetime
from detector.models import Window
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.sources import ReadRequest, Source
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource

RULES = load_rules(DEFAULT_RULES_DIR)
WINDOW = Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"))
COLUMNS = (
    *("TimeGenerated", "Computer", "sIP", "sPort", "cIP", "csMethod", "csUriStem", "csUriQuery", "csUserName"),
    *("csUserAgent", "scStatus", "sSiteName"),
)
IIS_FIELDS = "date time s-sitename s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status"
# A value of the column's type no reader can type (JSON); an IIS log can only hold a port that is no number.
WRONG_TYPE = {"sPort": "x443", "TimeGenerated": "yesterday", "cIP": {"a": 1}, "Computer": ["web01"], "sIP": {"ip": 1}}


def _rows(agent: str, bad: int, column: str, damage: str) -> list[dict[str, Any]]:
    """40 failed logons of one client in a minute (the logon rules fire on them), to /owa/ and to
    autodiscover in turn, with `agent` as user agent ("curl/8" fails the user-agent rule's filter, "ab"
    passes it), line `bad` damaged."""
    rows = []
    for i in range(40):
        row: dict[str, Any] = {
            "TimeGenerated": f"2026-11-26T10:00:{i:02d}Z",
            "Computer": "web01",
            "sIP": "10.0.0.4",
            "sPort": 443,
            "cIP": "203.0.113.9",
            "csMethod": "GET",
            "csUriStem": "/autodiscover/autodiscover.json" if i % 2 else "/owa/",
            "csUriQuery": "-",
            "csUserName": "bob",
            "csUserAgent": agent,
            "scStatus": "401",
            "sSiteName": "W3SVC1",
        }
        if i == bad:
            if damage == "missing":
                del row[column]
            else:
                row[column] = None if damage == "null" else WRONG_TYPE[column]
        rows.append(row)
    return rows


def _write(tmp_path: Path, shape: str, rows: list[dict[str, Any]]) -> Path:
    if shape == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif shape == "array":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    else:
        kinds = {"TimeGenerated": "datetime", "sPort": "int"}
        columns = [{"name": c, "type": kinds.get(c, "string")} for c in COLUMNS]
        table = {"name": "PrimaryResult", "columns": columns, "rows": [[row.get(c) for c in COLUMNS] for row in rows]}
        path = tmp_path / "response.json"
        path.write_text(json.dumps({"tables": [table]}), encoding="utf-8")
    return path


def _outcome(source: Source, rule: Any, pushdown: bool) -> tuple[Any, ...]:
    logic = rule.logic
    request = ReadRequest(WINDOW, logic.columns, logic.required_columns, logic.candidate_spec() if pushdown else None)
    rows = list(source.read(request))
    stats = source.read_stats()
    findings = json.dumps(logic.evaluate(rows, WINDOW), default=str, sort_keys=True)
    return findings, stats["rowsRead"], stats["skippedByFile"]


# A response's rows all have every column of its table: a column is missing from all of them or none.
CASES = [
    pytest.param(shape, rule, column, damage, id=f"{shape}-{rule.id[:8]}-{column}-{damage}")
    for shape in ("jsonl", "array", "response")
    for rule in RULES
    for column in rule.logic.required_columns
    for damage in ("missing", "null", "wrong type")
    if not (damage == "wrong type" and column not in WRONG_TYPE) and not (shape == "response" and damage == "missing")
]


@pytest.mark.parametrize("bad", [4, 5])  # an /owa/ request, an autodiscover one
@pytest.mark.parametrize("agent", ["curl/8", "ab"])
@pytest.mark.parametrize(("shape", "rule", "column", "damage"), CASES)
def test_a_json_line_with_a_bad_required_column_is_skipped_by_both_reads(
    tmp_path: Path, shape: str, agent: str, rule: Any, column: str, damage: str, bad: int, key_reader: str
) -> None:
    path = _write(tmp_path, shape, _rows(agent, bad, column, damage))
    plain, fast = _outcome(FileSource(path), rule, False), _outcome(FileSource(path), rule, True)
    # A null reads as "" (a string) or null (a port), as Log Analytics gives them; but a row needs its time.
    # Missing or untypable: skipped.
    assert plain[2] == ({} if damage == "null" and column != "TimeGenerated" else {str(path): 1})
    assert fast == plain


@pytest.mark.parametrize("agent", ["curl/8", "ab"])
@pytest.mark.parametrize("port", ["+443", "-443", "x443", "\u0664\u0664\u0663", "1" * 19])
@pytest.mark.parametrize("rule", [r for r in RULES if "sPort" in r.logic.required_columns], ids=lambda r: r.id[:8])
def test_an_iis_entry_with_a_port_that_is_no_number_is_skipped_by_both_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: str, port: str, rule: Any
) -> None:
    import detector.sources.iis as iis_module

    monkeypatch.setattr(iis_module, "SMALL_RUN_BYTES", 300)  # the few entries make a polars frame
    lines = ["#Software: Microsoft Internet Information Services 10.0", f"#Fields: {IIS_FIELDS}"]
    for i, row in enumerate(_rows(agent, -1, "sPort", "missing")):
        stamp = row["TimeGenerated"].replace("T", " ").rstrip("Z")
        fields = [stamp, row["sSiteName"], row["sIP"], row["csMethod"], row["csUriStem"], row["csUriQuery"]]
        fields += [port if i == 5 else "443", row["csUserName"], row["cIP"], row["csUserAgent"], row["scStatus"]]
        lines.append(" ".join(fields))
    folder = tmp_path / "W3SVC1"
    folder.mkdir()
    (folder / "u_ex261126.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = _outcome(IisLogSource(tmp_path, "web01"), rule, False)
    fast = _outcome(IisLogSource(tmp_path, "web01"), rule, True)
    assert plain[2] == {str(folder / "u_ex261126.log"): 1}
    assert fast == plain
