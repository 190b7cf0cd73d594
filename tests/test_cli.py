"""The command line: the documented shape, exit codes, and one clear message per bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.helpers import FILES, expected_findings

ROOT = Path(__file__).resolve().parent.parent
DAY_ARGS = ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_a_table_and_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "findings.jsonl"
    code, out, err = run_cli(
        ["run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--sink", "stdout", "--sink", f"jsonl:{out_file}"],
        capsys,
    )
    assert code == EXIT_OK
    assert "203.0.113.9" in out
    assert "7 finding(s)" in out
    assert "7 finding(s)" in err and "rows evaluated" in err
    records = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [(r["cIP"], r["portCount"], r["ConnectionsCount"]) for r in records] == [
        (e["cIP"], e["portCount"], e["ConnectionsCount"]) for e in expected_findings()
    ]


def test_rerun_upserts_instead_of_duplicating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "findings.jsonl"
    args = ["run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--sink", f"jsonl:{out_file}"]
    assert run_cli(args, capsys)[0] == EXIT_OK
    first = out_file.read_text(encoding="utf-8")
    assert run_cli(args, capsys)[0] == EXIT_OK
    assert out_file.read_text(encoding="utf-8") == first


def test_run_with_iis_logs_and_computer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        [
            "run",
            "--source",
            f"iis:{FILES / 'iis'}",
            "--computer",
            "web01.contoso.com",
            *DAY_ARGS,
            "--rule",
            "44a555d8-ecee-4a25-95ce-055879b4b14b",
        ],
        capsys,
    )
    assert code == EXIT_OK
    assert f"{len(expected_findings('web01.contoso.com'))} finding(s)" in out


def test_no_findings_still_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        [
            "run",
            "--source",
            f"file:{FILES / 'w3ciislog.jsonl'}",
            "--start",
            "2026-11-20T00:00:00Z",
            "--end",
            "2026-11-21T00:00:00Z",
        ],
        capsys,
    )
    assert code == EXIT_OK
    assert "No findings." in out


def test_unaligned_window_warns_about_partial_bins(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        [
            "run",
            "--source",
            f"file:{FILES / 'w3ciislog.jsonl'}",
            "--start",
            "2026-11-26T00:05:00Z",
            "--end",
            "2026-11-27T00:00:00Z",
        ],
        capsys,
    )
    assert code == EXIT_OK
    assert "partial" in err


def _bad_jsonl(tmp_path: Path) -> str:
    path = tmp_path / "bad.jsonl"
    good = (FILES / "w3ciislog.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    path.write_text("\n".join([*good, "{not json"]) + "\n", encoding="utf-8")
    return f"file:{path}"


def _missing_column(tmp_path: Path) -> str:
    path = tmp_path / "missing.jsonl"
    path.write_text(
        '{"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "1.2.3.4", "sIP": "10.0.0.4", "sPort": 80}\n', encoding="utf-8"
    )
    return f"file:{path}"


def _no_fields(tmp_path: Path) -> str:
    path = tmp_path / "u_ex261126.log"
    path.write_text(
        "#Software: Microsoft Internet Information Services 10.0\n2026-11-26 10:00:00 10.0.0.4 80\n", encoding="utf-8"
    )
    return f"iis:{path}"


def _bad_rule(tmp_path: Path) -> str:
    path = tmp_path / "rule.yaml"
    path.write_text(
        (ROOT / "rules" / "high_port_count_by_client_ip.yaml")
        .read_text(encoding="utf-8")
        .replace("severity: Medium", "severity: Severe"),
        encoding="utf-8",
    )
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        # Malformed lines are skipped and counted by default; --strict makes them errors.
        (lambda p: ["--strict", "--source", _bad_jsonl(p), *DAY_ARGS], "bad.jsonl:4: not valid JSON"),
        (
            lambda p: ["--strict", "--source", _missing_column(p), *DAY_ARGS],
            "missing.jsonl:1: missing required column 'Computer'",
        ),
        (lambda p: ["--strict", "--source", _no_fields(p), *DAY_ARGS], "u_ex261126.log:2: log entry before any #Fields"),
        (
            lambda p: [
                "--source",
                f"file:{FILES / 'w3ciislog.jsonl'}",
                "--start",
                "2026-11-27T00:00:00Z",
                "--end",
                "2026-11-26T00:00:00Z",
            ],
            "setting --start: 2026-11-27T00:00:00Z is not before --end",
        ),
        (
            lambda p: [
                "--source",
                f"file:{FILES / 'w3ciislog.jsonl'}",
                "--start",
                "2026-11-26T00:00:00Z",
                "--end",
                "2026-11-26T00:00:00Z",
            ],
            "is not before --end",
        ),
        (
            lambda p: ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", "--start", "yesterday", "--end", "2026-11-26T00:00:00Z"],
            "setting --start: 'yesterday' is not an ISO 8601 datetime",
        ),
        (lambda p: ["--source", "s3://bucket/x", *DAY_ARGS], "unknown source 's3://bucket/x'"),
        (lambda p: ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--sink", "kafka:x"], "unknown sink 'kafka:x'"),
        (lambda p: ["--source", f"file:{p / 'nope.jsonl'}", *DAY_ARGS], "nope.jsonl: cannot open"),
        (
            lambda p: ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--rule", _bad_rule(p)],
            "field 'severity': 'Severe' is not one of",
        ),
    ],
    ids=[
        "malformed-json-line",
        "missing-column",
        "iis-without-fields",
        "start-after-end",
        "start-equals-end",
        "bad-datetime",
        "unknown-source",
        "unknown-sink",
        "missing-file",
        "bad-rule",
    ],
)
def test_bad_input_exits_non_zero_with_one_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args: object, message: str
) -> None:
    out_file = tmp_path / "out" / "findings.jsonl"
    code, out, err = run_cli(["run", *make_args(tmp_path), "--sink", f"jsonl:{out_file}"], capsys)  # type: ignore[operator]
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert out == ""
    assert not out_file.exists(), "a failed run writes no output file"


def test_failed_run_leaves_previous_output_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "findings.jsonl"
    good = ["run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--sink", f"jsonl:{out_file}"]
    assert run_cli(good, capsys)[0] == EXIT_OK
    before = out_file.read_text(encoding="utf-8")
    bad = ["run", "--strict", "--source", _bad_jsonl(tmp_path), *DAY_ARGS, "--sink", f"jsonl:{out_file}"]
    assert run_cli(bad, capsys)[0] == EXIT_BAD_INPUT
    assert out_file.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".findings")] == []


def test_validate_runs_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["validate"], capsys)
    assert code == EXIT_OK
    assert "8 examples ok" in out


def test_validate_reports_a_bad_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["validate", _bad_rule(tmp_path)], capsys)
    assert code == EXIT_BAD_INPUT
    assert "field 'severity'" in err


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "detector", "run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "7 finding(s)" in result.stdout
