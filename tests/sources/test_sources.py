"""Sources: every file format gives the findings the fixtures were built to produce; bad input is named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from detector.errors import ConfigError, InputError
from detector.evaluate import evaluate
from detector.logic.failed_logons import FailedLogonCount
from detector.models import Row, Window
from detector.pushdown import SharedSpec
from detector.rules import DEFAULT_RULES_DIR, Rule, load_rules
from detector.sources import ReadRequest, open_source
from detector.sources.file import FileSource
from tests.helpers import DAY, FILES, RULE, expected_findings, open_for_test, summarize

REQUEST = ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns, RULE.logic.candidate_spec())


def read(spec: str, window: Window = DAY, computer: str = "", pushdown: bool = False, strict: bool = False) -> list[Row]:
    """Every row of the window, or with pushdown only the rows of groups that can reach the threshold."""
    request = ReadRequest(window, REQUEST.columns, REQUEST.required, REQUEST.candidates if pushdown else None)
    return list(open_for_test(spec, computer, strict).read(request))


@pytest.mark.parametrize("pushdown", [False, True])
@pytest.mark.parametrize("name", ["w3ciislog.jsonl", "w3ciislog_array.json", "la_response.json"])
def test_each_json_format_gives_the_planted_findings(name: str, pushdown: bool) -> None:
    findings = evaluate(RULE, read(f"file:{FILES / name}", pushdown=pushdown), DAY)
    assert summarize(findings) == expected_findings()


def test_json_formats_agree_row_for_row() -> None:
    jsonl = read(f"file:{FILES / 'w3ciislog.jsonl'}")
    assert jsonl == read(f"file:{FILES / 'w3ciislog_array.json'}") == read(f"file:{FILES / 'la_response.json'}")


@pytest.mark.parametrize("pushdown", [False, True])
def test_iis_logs_give_the_planted_findings_of_that_server(pushdown: bool) -> None:
    rows = read(f"iis:{FILES / 'iis'}", computer="web01.contoso.com", pushdown=pushdown)
    assert {r["Computer"] for r in rows} == {"web01.contoso.com"}
    assert summarize(evaluate(RULE, rows, DAY)) == expected_findings("web01.contoso.com")


def test_iis_logs_agree_with_the_same_rows_as_json() -> None:
    """Same rows, two formats: IIS keeps '-' where JSON had null/empty and has second precision only."""
    iis = read(f"iis:{FILES / 'iis'}", computer="web01.contoso.com")
    json_rows = [r for r in read(f"file:{FILES / 'w3ciislog.jsonl'}") if r["Computer"] == "web01.contoso.com"]
    assert len(iis) == len(json_rows)
    iis_findings = evaluate(RULE, iis, DAY)
    json_findings = evaluate(RULE, json_rows, DAY)
    assert [f.id for f in iis_findings] == [f.id for f in json_findings]
    assert [f.columns["set_sPort"] for f in iis_findings] == [f.columns["set_sPort"] for f in json_findings]


def test_iis_maps_fields_and_keeps_dash() -> None:
    rows = read(f"iis:{FILES / 'iis' / 'W3SVC1' / 'u_ex261126.log'}", computer="web01")
    first = rows[0]
    assert first["Computer"] == "web01"
    assert isinstance(first["sPort"], int)
    # Before the mid-file #Fields change s-sitename is not logged: ""; after it, the site name is.
    assert {r["sSiteName"] for r in rows if r["TimeGenerated"].hour < 12} == {""}
    assert {r["sSiteName"] for r in rows if r["TimeGenerated"].hour >= 12} == {"Default+Web+Site"}
    assert "-" in {r["csUserName"] for r in rows}


def test_iis_default_computer_is_this_host() -> None:
    import socket

    rows = read(f"iis:{FILES / 'iis'}")
    assert rows[0]["Computer"] == socket.gethostname()


def test_window_is_half_open() -> None:
    window = Window(DAY.start.replace(hour=10), DAY.start.replace(hour=10, minute=10))
    rows = read(f"file:{FILES / 'w3ciislog.jsonl'}", window)
    assert rows
    assert all(window.start <= r["TimeGenerated"] < window.end for r in rows)


def test_source_yields_typed_rows() -> None:
    rows = read(f"file:{FILES / 'w3ciislog.jsonl'}")
    assert all(r["TimeGenerated"].tzinfo is not None for r in rows)
    assert {type(r["sPort"]) for r in rows} == {int, type(None)}
    assert all(isinstance(r["csUserName"], str) for r in rows)  # null/absent become ""


GOOD_LINE = '{"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "a", "Computer": "c", "sIP": "s", "sPort": 1}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GOOD_LINE + '{"broken": \n', ":2: not valid JSON"),
        (
            '{"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "a", "Computer": "c", "sPort": 1}\n',
            ":1: missing required column 'sIP'",
        ),
        ('{"TimeGenerated": "yesterday", "cIP": "a", "Computer": "c", "sIP": "s", "sPort": 1}\n', ":1: column TimeGenerated"),
        ('{"TimeGenerated": null, "cIP": "a", "Computer": "c", "sIP": "s", "sPort": 1}\n', ":1: TimeGenerated is null"),
        (
            '{"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "a", "Computer": "c", "sIP": "s", "sPort": "http"}\n',
            ":1: column sPort must be an integer",
        ),
        (GOOD_LINE + '{"TimeGenerated": "2026-11-26T10:00:0', ":2: truncated last line"),
        ("[1]\n", "row 0: must be a JSON object"),
    ],
)
@pytest.mark.parametrize("pushdown", [False, True])
def test_a_malformed_json_line_is_skipped_and_counted_or_an_error_when_strict(
    tmp_path: Path, content: str, message: str, pushdown: bool
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read(f"file:{path}", pushdown=pushdown, strict=True)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)
    source = open_for_test(f"file:{path}")
    request = ReadRequest(DAY, REQUEST.columns, REQUEST.required, REQUEST.candidates if pushdown else None)
    rows = list(source.read(request))
    assert len(rows) == (0 if pushdown else content.count(GOOD_LINE))  # one port cannot reach the threshold
    stats = source.read_stats()
    assert stats["skippedLines"] == 1
    assert stats["skippedByFile"] == {str(path): 1}
    assert stats["rowsRead"] == content.count(GOOD_LINE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello\n", ":1: is not JSON Lines"),
        (
            '{"tables": [{"name": "PrimaryResult", "columns": [{"name": "TimeGenerated", "type": "datetime"}], "rows": []}]}',
            "missing required column(s) cIP, Computer, sIP, sPort",
        ),
        ('{"tables": [], "error": {"code": "PartialError"}}', "carries an error (PartialError)"),
    ],
)
def test_bad_json_input_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read(f"file:{path}")
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_pretty_printed_la_response_is_recognised(tmp_path: Path) -> None:
    document = json.loads((FILES / "la_response.json").read_text(encoding="utf-8"))
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    assert len(read(f"file:{path}")) == len(read(f"file:{FILES / 'la_response.json'}"))


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert read(f"file:{path}") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("2026-11-26 10:00:00 10.0.0.4 GET / - 80\n", ":1: log entry before any #Fields"),
        ("#Fields: date time s-ip s-port c-ip\n2026-11-26 10:00:00 10.0.0.4 80\n", ":2: 4 fields but #Fields declares 5"),
        ("#Fields: date time s-ip s-port c-ip\n2026-11-26 xx:00:00 10.0.0.4 80 1.2.3.4\n", ":2: date/time"),
        ("#Fields: date time s-ip s-port c-ip\n2026-11-26 10:00:00 10.0.0.4 eighty 1.2.3.4\n", ":2: sPort is 'eighty'"),
        ("#Fields: date time s-ip s-port c-ip\n2026-11-26 10:00:00 10.0.0.4 80 1.2.\x003.4\n", ":2: NUL bytes"),
        ("#Fields: date time s-ip s-port c-ip\n2026-11-26 10:00:00 10.0.0.4 80 1.2.3.4", ":2: truncated last line"),
    ],
)
@pytest.mark.parametrize("pushdown", [False, True])
def test_a_malformed_iis_line_is_skipped_and_counted_or_an_error_when_strict(
    tmp_path: Path, content: str, message: str, pushdown: bool
) -> None:
    path = tmp_path / "u_ex261126.log"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read(f"iis:{path}", computer="web01", pushdown=pushdown, strict=True)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path))
    source = open_for_test(f"iis:{path}", "web01")
    request = ReadRequest(DAY, REQUEST.columns, REQUEST.required, REQUEST.candidates if pushdown else None)
    assert list(source.read(request)) == []
    assert source.read_stats()["skippedByFile"] == {str(path): 1}


def test_iis_fields_without_a_column_the_rule_reads_are_read_with_it_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "u_ex261126.log"
    path.write_text("#Fields: date time s-port c-ip\n2026-11-26 10:00:00 80 1.2.3.4\n2026-11-26 10:00:01 81 1.2.3.4\n")
    rows = read(f"iis:{path}", computer="web01")
    assert [(r["sIP"], r["sPort"]) for r in rows] == [("", 80), ("", 81)]
    warnings = [r.getMessage() for r in caplog.records if "lacks" in r.getMessage()]
    assert len(warnings) == 1  # one per block, not one per entry
    assert "s-ip" in warnings[0]
    assert str(path) in warnings[0]


@pytest.mark.parametrize("shared", [False, True])
def test_iis_fields_without_a_key_the_rule_groups_by_warn_though_its_spec_does_not_prune(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, shared: bool
) -> None:
    # The user-agent rule groups by sSiteName and csUserName but its threshold prunes nothing: a block
    # without those fields changes its groups, which is a WARNING, not a detail column's INFO.
    (agent,) = [r for r in load_rules(DEFAULT_RULES_DIR) if r.id == "f845881e-2500-44dc-8ed7-b372af3e1e25"]
    spec = agent.logic.candidate_spec()
    assert spec is not None and not spec.prunes and "sSiteName" in spec.keys
    port = RULE.logic.candidate_spec()
    if shared and port is not None:
        spec = SharedSpec.of([spec, port])
    path = tmp_path / "u_ex261126.log"
    path.write_text(
        "#Fields: date time s-ip cs-method cs-uri-stem s-port c-ip cs(User-Agent) sc-status sc-substatus "
        "sc-win32-status\n2026-11-26 10:00:00 10.0.0.4 GET / 80 1.2.3.4 x 200 0 0\n"
    )
    request = ReadRequest(DAY, agent.logic.columns, agent.logic.required_columns, spec)
    with caplog.at_level(logging.INFO):
        assert len(list(open_for_test(f"iis:{path}", "web01").read(request))) == 1
    (record,) = [r for r in caplog.records if "lacks" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "s-sitename" in record.getMessage() and "cs-username" in record.getMessage()


@pytest.mark.parametrize("pushdown", [False, True])
def test_a_malformed_line_of_a_file_with_a_control_character_in_its_name_names_it_once_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pushdown: bool
) -> None:
    path = tmp_path / "esc\x1b[31m.jsonl"
    path.write_text(json.dumps({"TimeGenerated": "2026-11-26T05:00:00Z", "Computer": "w", "cIP": "1.2.3.4"}) + "\n")
    shown_path = str(path).replace("\x1b", "\\x1b")
    # (A setting refuses a control character: a source built in code, as a caller of the package may.)
    request = ReadRequest(DAY, REQUEST.columns, REQUEST.required, REQUEST.candidates if pushdown else None)
    with pytest.raises(InputError) as caught:
        list(FileSource(path, strict=True).read(request))
    assert str(caught.value).startswith(f"{shown_path}:1: missing required column 'sIP'"), str(caught.value)
    assert str(caught.value).count(shown_path) == 1 and "\x1b" not in str(caught.value)
    assert list(FileSource(path).read(request)) == []
    (warning,) = [r.getMessage() for r in caplog.records if "skipped malformed line" in r.getMessage()]
    assert warning.count(shown_path) == 1 and "\x1b" not in warning


def test_iis_fields_without_time_skip_their_entries_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "u_ex261126.log"
    path.write_text("#Fields: date s-ip s-port c-ip\n2026-11-26 10.0.0.4 80 1.2.3.4\n")
    assert read(f"iis:{path}", computer="web01") == []
    assert any("has no 'time' field" in r.getMessage() for r in caplog.records)


def test_iis_date_from_directive_when_no_date_field(tmp_path: Path) -> None:
    path = tmp_path / "u_ex261126.log"
    path.write_text("#Date: 2026-11-26 00:00:00\n#Fields: time s-ip s-port c-ip\n10:00:00 10.0.0.4 - 1.2.3.4\n", encoding="utf-8")
    (row,) = read(f"iis:{path}", computer="web01")
    assert row["TimeGenerated"].isoformat() == "2026-11-26T10:00:00+00:00"
    assert row["sPort"] is None  # '-' in a numeric field is null
    assert row["csUserAgent"] == ""  # not logged at all


def test_iis_folder_without_logs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no web server \(W3SVC\) \*\.log files"):
        read(f"iis:{tmp_path}")


@pytest.mark.parametrize("spec", ["ftp:/x", "file:", "nothing", "iis"])
def test_unknown_source_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        open_source(spec)


ALL_RULES = load_rules(DEFAULT_RULES_DIR)


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.id[:8])
@pytest.mark.parametrize("name", ["w3ciislog.jsonl", "w3ciislog_array.json", "la_response.json", "w3ciislog_logons.jsonl", "iis"])
def test_every_rule_finds_the_same_with_and_without_its_pushdown(rule: Rule, name: str) -> None:
    spec = f"iis:{FILES / name}" if name == "iis" else f"file:{FILES / name}"
    logic = rule.logic
    found = []
    for candidates in (None, logic.candidate_spec()):
        source = open_for_test(spec, "web01.contoso.com")
        rows = list(source.read(ReadRequest(DAY, logic.columns, logic.required_columns, candidates)))
        found.append(([f.to_json() for f in evaluate(rule, rows, DAY)], len(rows), source.read_stats()["rowsRead"]))
    (plain, plain_rows, plain_read), (pushed, pushed_rows, pushed_read) = found
    assert pushed == plain
    assert pushed_read == plain_read == plain_rows  # rowsRead counts the window's rows, whatever was pushed down
    if name not in {"w3ciislog_array.json", "la_response.json"}:
        assert pushed_rows < plain_rows
    if name == "w3ciislog_logons.jsonl" and isinstance(logic, FailedLogonCount):
        assert plain  # the logon fixture makes both failed-logon rules fire
