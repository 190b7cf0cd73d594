"""A rule that lives only in tests/files/extra_rule/ (its YAML and the logic module it names) runs end to
end through the CLI, over the file and IIS sources, into the stdout and jsonl sinks: adding a rule
needs no change to the engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from detector.cli import EXIT_OK, main
from detector.errors import RuleError
from detector.kql import bin_datetime, format_datetime, parse_datetime
from detector.rules import DEFAULT_RULES_DIR, load_rules
from tests.helpers import FILES, ROOT

EXTRA = FILES / "extra_rule"
RULE_ID = "6b1d2f0e-4c3a-4e59-9a77-0d5e2c1f9a10"
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


def test_the_engine_does_not_know_the_rule() -> None:
    for folder in (ENGINE, DEFAULT_RULES_DIR):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml"):
                assert RULE_ID not in path.read_text(encoding="utf-8"), path


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
    assert f"{copy / 'not_found_by_client_ip.yaml'}: High count of not-found responses" in result.stdout


def test_the_same_rule_id_with_a_second_logic_module_is_refused(tmp_path: Path) -> None:
    load_rules(EXTRA)
    copy = tmp_path / "copy"
    shutil.copytree(EXTRA, copy)
    with pytest.raises(RuleError, match="already has logic NotFoundByClientIP"):
        load_rules(copy)


@pytest.mark.parametrize(
    ("value", "message"),
    [("../not_found_logic.py", "must be the name of a .py file"), ("missing.py", "does not exist"), ("x.txt", ".py file")],
)
def test_a_bad_logic_module_is_one_clear_error(tmp_path: Path, value: str, message: str) -> None:
    text = (EXTRA / "not_found_by_client_ip.yaml").read_text(encoding="utf-8")
    path = tmp_path / "rule.yaml"
    path.write_text(text.replace("logicModule: not_found_logic.py", f"logicModule: {value}"), encoding="utf-8")
    with pytest.raises(RuleError, match=message) as caught:
        load_rules(path)
    assert "logicModule" in str(caught.value) and str(caught.value).startswith(f"{path}:")


def test_a_logic_module_that_fails_to_import_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copy(EXTRA / "not_found_by_client_ip.yaml", tmp_path / "rule.yaml")
    (tmp_path / "not_found_logic.py").write_text("raise ImportError('no such thing')\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"importing .* failed: ImportError: no such thing"):
        load_rules(tmp_path)
