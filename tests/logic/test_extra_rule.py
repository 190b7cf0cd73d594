"""A rule that lives only in tests/files/extra_rule/ (its YAML and the logic module it names) runs end to
end through the CLI, over every source (file, IIS, Log Analytics through its fake and the real
azure-monitor-query client) into every sink (stdout, jsonl, and sentinel, loganalytics-table and webhook
through their fakes and the real Azure SDK pipelines): adding a rule needs no change to the engine.

The rule's id and name are read from its YAML here, so that no file outside its folder names it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb_kql
import pytest
import yaml

from detector.cli import EXIT_OK, main
from detector.errors import RuleError
from detector.kql import bin_datetime, format_datetime, parse_datetime
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.sinks.ingestion import SCHEMA_PATH, alert_rule_template
from detector.sinks.presentation import chat_text, markdown_text
from tests.fakes.arm import ArmHandler
from tests.fakes.ingestion import IngestionHandler, stream_columns
from tests.fakes.loganalytics import LogAnalyticsFake, serve_log_analytics
from tests.fakes.server import FakeServer, serve
from tests.fakes.webhook import WebhookHandler
from tests.helpers import FILES, ROOT
from tests.sink_support import CLIENT_ID, DCR_ID, WORKSPACE
from tests.sinks.test_ingestion import load_rows_into_duckdb, projected

if TYPE_CHECKING:
    from tests.fakes.tls import TestPki

EXTRA = FILES / "extra_rule"
_RULE_YAML: dict[str, Any] = yaml.safe_load((EXTRA / "not_found_by_client_ip.yaml").read_text(encoding="utf-8"))
RULE_ID: str = _RULE_YAML["id"]
RULE_NAME: str = _RULE_YAML["name"]
LOGIC_MODULE: str = _RULE_YAML["logicModule"]
ENGINE = ROOT / "detector"
DAY_ARGS = ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z"]


def planted(computer: str | None = None) -> list[tuple[str, str, str, str, int]]:
    """404s per 10-minute bin by cIP, Computer, sIP, counted from the fixture's raw lines (>= 5 fire)."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        moment = parse_datetime(row["TimeGenerated"])
        if row.get("scStatus") != "404" or not "2026-11-26" <= row["TimeGenerated"] < "2026-11-27":
            continue
        if computer is None or row["Computer"] == computer:
            bin_start = format_datetime(bin_datetime(moment, timedelta(minutes=10)))
            counts[(bin_start, row["cIP"], row["Computer"], row["sIP"])] += 1
    return sorted((*key, n) for key, n in counts.items() if n >= 5)


# Folders that are not the project's files: tools, caches, the VCS.
_NOT_PROJECT = {".git", ".tools", ".venv", "__pycache__", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def project_files() -> Iterator[Path]:
    pending = [ROOT]
    while pending:
        for path in pending.pop().iterdir():
            if path.is_symlink() or path.name in _NOT_PROJECT or path == EXTRA:
                continue
            if path.is_dir():
                pending.append(path)
            elif path.is_file():
                yield path


def test_no_file_outside_the_rule_folder_mentions_the_rule() -> None:
    (rule,) = load_rules(EXTRA)
    logic_class = type(rule.logic).__name__
    seen = 0
    for path in project_files():
        data = path.read_bytes()
        for needle in (RULE_ID, RULE_NAME, logic_class, LOGIC_MODULE.removesuffix(".py")):
            assert needle.encode() not in data, f"{path} mentions {needle}"
        seen += 1
    assert seen > 100  # the walk did reach the engine, rules/, infra/ and the tests
    assert {ENGINE / "evaluate.py", DEFAULT_RULES_DIR / "high_port_count_by_client_ip.yaml"} <= set(project_files())


@pytest.mark.parametrize(("source", "computer"), [("file", None), ("iis", "web01.contoso.com")])
def test_the_folder_rule_runs_end_to_end(
    source: str, computer: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "findings.jsonl"
    where = FILES / "w3ciislog.jsonl" if source == "file" else FILES / "iis"
    extra = ["--computer", computer] if computer else []
    args = [
        "run",
        "--rule",
        str(EXTRA),
        "--source",
        f"{source}:{where}",
        *extra,
        *DAY_ARGS,
        "--sink",
        "stdout",
        "--sink",
        f"jsonl:{out}",
    ]
    assert main(args) == EXIT_OK
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    found = sorted((r["TimeGenerated"], r["cIP"], r["Computer"], r["sIP"], r["NotFoundCount"]) for r in records)
    assert found == planted(computer) and found
    assert {r["RuleId"] for r in records} == {RULE_ID}
    assert all(r["Entities"] == [{"Type": "IP", "Address": r["cIP"]}] for r in records)
    assert all(r["FindingId"] in printed for r in records)


def test_a_rule_folder_can_be_copied_anywhere(tmp_path: Path) -> None:
    # In a fresh process: in this one the rule id already has its logic, and a second class is refused.
    copy = tmp_path / "my rules"
    shutil.copytree(EXTRA, copy)
    root = ENGINE.parent
    result = subprocess.run(
        [sys.executable, "-m", "detector", "validate", str(copy)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{copy / 'not_found_by_client_ip.yaml'}: {RULE_NAME}" in result.stdout


def test_the_same_rule_id_with_a_second_logic_module_is_refused(tmp_path: Path) -> None:
    load_rules(EXTRA)
    copy = tmp_path / "copy"
    shutil.copytree(EXTRA, copy)
    (rule,) = load_rules(EXTRA)
    with pytest.raises(RuleError, match=f"already has logic {type(rule.logic).__name__}"):
        load_rules(copy)


@pytest.mark.parametrize(
    ("value", "message"),
    [(f"../{LOGIC_MODULE}", "must be the name of a .py file"), ("missing.py", "does not exist"), ("x.txt", ".py file")],
)
def test_a_bad_logic_module_is_one_clear_error(tmp_path: Path, value: str, message: str) -> None:
    text = (EXTRA / "not_found_by_client_ip.yaml").read_text(encoding="utf-8")
    path = tmp_path / "rule.yaml"
    path.write_text(text.replace(f"logicModule: {LOGIC_MODULE}", f"logicModule: {value}"), encoding="utf-8")
    with pytest.raises(RuleError, match=message) as caught:
        load_rules(path)
    assert "logicModule" in str(caught.value) and str(caught.value).startswith(f"{path}:")


def test_a_logic_module_that_fails_to_import_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copy(EXTRA / "not_found_by_client_ip.yaml", tmp_path / "rule.yaml")
    (tmp_path / LOGIC_MODULE).write_text("raise ImportError('no such thing')\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"importing .* failed: ImportError: no such thing"):
        load_rules(tmp_path)


# -- every other source and sink: Log Analytics, sentinel, loganalytics-table, webhook --------------------

LA_WORKSPACE = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def services(pki: TestPki, azure_env: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeServer]]:
    """The fake workspace (over the fixture day), ARM, the Logs Ingestion API and a webhook receiver, wired
    through the settings a deployment sets."""
    fake = LogAnalyticsFake(LA_WORKSPACE)
    fake.load_jsonl(FILES / "w3ciislog.jsonl")
    with (
        serve_log_analytics(pki, fake) as logs,
        serve(ArmHandler, pki, workspaces={WORKSPACE.lower()}) as arm,
        serve(IngestionHandler, pki, streams={DCR_ID: stream_columns(SCHEMA_PATH)}) as ingestion,
        serve(WebhookHandler, pki) as webhook,
    ):
        arm.state["audience"] = arm.url
        for name, value in {
            "AZURE_CLIENT_ID": CLIENT_ID,
            "DETECTOR_LOGS_ENDPOINT": logs.url,
            "DETECTOR_ARM_ENDPOINT": arm.url,
            "DETECTOR_SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
            "DETECTOR_INGESTION_ENDPOINT": ingestion.url,
            "DETECTOR_INGESTION_DCR_IMMUTABLE_ID": DCR_ID,
            "DETECTOR_WEBHOOK_URL": f"{webhook.url}/hooks/extra",
        }.items():
            monkeypatch.setenv(name, value)
        logs.state["fake"] = fake
        yield {"logs": logs, "arm": arm, "ingestion": ingestion, "webhook": webhook}


def expected_title(r: dict[str, Any]) -> str:
    return f"{r['cIP']} on {r['Computer']} ({r['NotFoundCount']} not found)"


def expected_summary(r: dict[str, Any]) -> str:
    return (
        f"Client {r['cIP']} received {r['NotFoundCount']} not-found responses from {r['Computer']} ({r['sIP']}) "
        "within 10 minutes."
    )


@pytest.mark.parametrize(
    ("source", "computer"),
    [("file", None), ("iis", "web01.contoso.com"), ("loganalytics", None)],
)
def test_the_folder_rule_reaches_every_sink(
    source: str, computer: str | None, services: dict[str, FakeServer], tmp_path: Path
) -> None:
    out = tmp_path / "findings.jsonl"
    where = {"file": FILES / "w3ciislog.jsonl", "iis": FILES / "iis", "loganalytics": LA_WORKSPACE}[source]
    extra = ["--computer", computer] if computer else []
    sinks = ["sentinel", "loganalytics-table", "webhook", f"jsonl:{out}"]
    args = ["run", "--rule", str(EXTRA), "--source", f"{source}:{where}", *extra, *DAY_ARGS]
    assert main([*args, *(a for sink in sinks for a in ("--sink", sink))]) == EXIT_OK

    records = {r["FindingId"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    found = sorted((r["TimeGenerated"], r["cIP"], r["Computer"], r["sIP"], r["NotFoundCount"]) for r in records.values())
    assert found == planted(computer) and found
    if source == "loganalytics":
        # The rule's own filter and count threshold are pushed down: only its candidate groups' rows are pulled.
        first, *_, details = [r.query for r in services["logs"].state["fake"].requests]
        assert '| where scStatus == "404"' in first and "| where rows >= 5" in first
        assert details.rstrip().endswith("| project TimeGenerated, cIP, Computer, sIP, scStatus, csUriStem")

    # sentinel: one incident per finding, the rule's own title and summary, its IP entity, its tactic.
    incidents = {key[1]: value["properties"] for key, value in services["arm"].state["incidents"].items()}
    assert set(incidents) == set(records)
    for finding_id, props in incidents.items():
        r = records[finding_id]
        assert props["title"] == f"{RULE_NAME}: {expected_title(r)}"
        assert markdown_text(expected_summary(r), 1000) in props["description"]
        assert f"Entities: IP {markdown_text(r['cIP'])}" in props["description"]
        assert f"rule {RULE_ID}" in props["description"]
        assert props["severity"] == "Low"
        assert {"Tactic: Discovery", "Technique: T1595"} <= {label["labelName"] for label in props["labels"]}

    # loganalytics-table: the common columns and the rule's whole result in Result, on the one generic stream.
    rows = services["ingestion"].state["rows"]
    assert sorted(row["FindingId"] for row in rows) == sorted(records)
    for row in rows:
        r = records[row["FindingId"]]
        assert (row["RuleId"], row["RuleName"]) == (RULE_ID, RULE_NAME)
        assert (row["FindingTitle"], row["Summary"]) == (expected_title(r), expected_summary(r))
        assert row["Entities"] == [{"Type": "IP", "Address": r["cIP"]}]
        assert list(row["Result"]) == [
            "TimeGenerated", "cIP", "Computer", "sIP", "set_csUriStem", "NotFoundCount", "IPCustomEntity"
        ]  # fmt: skip
        assert row["Result"]["NotFoundCount"] == r["NotFoundCount"]
        assert row["Result"]["set_csUriStem"] == r["set_csUriStem"]

    # webhook: one POST per finding, keyed by its id, the rule's title and summary, the text escaped.
    posts = services["webhook"].state["received"]
    assert sorted(p["headers"]["idempotency-key"] for p in posts) == sorted(records)
    for post in posts:
        body = post["body"]
        r = records[body["findingId"]]
        assert (body["title"], body["summary"]) == (expected_title(r), expected_summary(r))
        assert chat_text(expected_summary(r), 1000) in body["text"]
        assert body["finding"]["Entities"] == [{"Type": "IP", "Address": r["cIP"]}]
        assert body["finding"]["RuleId"] == RULE_ID


def test_the_alert_rule_for_a_folder_rule_reads_its_rows_from_the_findings_table(
    services: dict[str, FakeServer], tmp_path: Path
) -> None:
    """infra/schema/ holds alert rules for rules/ only (generate.py reads rules/), but the findings table is
    generic: the template the same code builds for this rule raises one alert per finding of it, from the
    common columns and Result. duckdb-kql has no ingestion_time(): TimeGenerated stands in for it."""
    (rule,) = load_rules(EXTRA)
    args = ["run", "--rule", str(EXTRA), "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS]
    assert main([*args, "--sink", "loganalytics-table"]) == EXIT_OK
    rows = services["ingestion"].state["rows"]
    template = alert_rule_template(rule)
    assert [m["entityType"] for m in template["entityMappings"]] == ["IP"]
    query = str(template["query"]).replace("ingestion_time()", "TimeGenerated")
    names = projected(query)
    alerts = [dict(zip(names, r, strict=True)) for r in duckdb_kql.kql(load_rows_into_duckdb(rows), query).fetchall()]
    assert sorted((a["FindingId"], a["IPCustomEntity"]) for a in alerts) == sorted(
        (row["FindingId"], row["Result"]["cIP"]) for row in rows
    )
    assert len(alerts) == len(planted())
