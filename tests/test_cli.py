"""The command line: the documented shape, exit codes, and one clear message per bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from detector.cli import EXIT_BAD_INPUT, EXIT_OK, main
from tests.helpers import FILES, ROOT, expected_findings

DAY_ARGS = ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z"]
PORT_RULE_ID = "44a555d8-ecee-4a25-95ce-055879b4b14b"


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
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args: Callable[[Path], list[str]], message: str
) -> None:
    out_file = tmp_path / "out" / "findings.jsonl"
    code, out, err = run_cli(["run", *make_args(tmp_path), "--sink", f"jsonl:{out_file}"], capsys)
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


def test_module_entry_point_flushes_what_it_wrote_and_keeps_the_exit_status(tmp_path: Path) -> None:
    """`python -m detector` leaves by os._exit once main() returns: piped output and sink files are whole,
    and a bad input's status and message still reach the caller."""
    out_file = tmp_path / "findings.jsonl"
    source = f"file:{FILES / 'w3ciislog.jsonl'}"
    sinks = ["--sink", "stdout", "--sink", f"jsonl:{out_file}"]
    ran = subprocess.run(
        [sys.executable, "-m", "detector", "run", "--source", source, *DAY_ARGS, *sinks],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == EXIT_OK, ran.stderr
    assert ran.stdout.splitlines()[-1].startswith("7 finding(s) of "), ran.stdout[-300:]  # the table's last line
    assert len(out_file.read_text(encoding="utf-8").splitlines()) == 7
    assert "rows evaluated" in ran.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "detector", "validate", _bad_rule(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == EXIT_BAD_INPUT
    assert "field 'severity'" in bad.stderr


def test_module_entry_point_skips_the_interpreters_teardown() -> None:
    """An object alive at exit is not finalised after a command returned (the teardown would); one that
    raises takes the usual way out, which does finalise it."""
    probe = (
        "import os, runpy, sys\n"
        "class Probe:\n"
        "    def __del__(self):\n"
        "        os.write(2, b'finalised')\n"
        "probe = Probe()\n"
        "sys.argv = ['detector', *sys.argv[1:]]\n"
        "runpy.run_module('detector', run_name='__main__')\n"
    )

    def probed(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, timeout=120, check=False)

    returned = probed("validate")
    assert returned.returncode == EXIT_OK, returned.stderr
    assert b"finalised" not in returned.stderr
    raised = probed("--no-such-option")
    assert raised.returncode == 2  # argparse's own exit, from inside main()
    assert b"finalised" in raised.stderr


# -- common options, version, help ---------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-v", "validate"], ["validate", "-v"], ["-q", "validate"], ["validate", "--debug"]])
def test_common_options_go_before_or_after_the_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_OK


def test_verbosity_levels() -> None:
    from detector.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["validate"]).verbose == 0
    assert parser.parse_args(["-v", "validate"]).verbose == 1
    assert parser.parse_args(["validate", "-vv"]).verbose == 2
    assert parser.parse_args(["-q", "validate"]).quiet is True
    assert parser.parse_args(["validate", "--debug"]).debug is True


def test_quiet_prints_no_summary_and_verbose_logs_the_summary_line(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    args = ["run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS]
    code, out, err = run_cli(["-q", *args], capsys)
    assert code == EXIT_OK and "7 finding(s)" in out
    assert err == ""
    run_cli([*args, "-v"], capsys)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("detector.summary "))
    summary = json.loads(line.split("detector.summary ", 1)[1])
    assert summary["findings"] == 7 and summary["ok"] is True


def test_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    import detector

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"python -m detector {detector.__version__}\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "detector.__version__"}


def test_help_lists_the_exit_codes_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    import detector.cli
    from detector.cli import COMMANDS, EXIT_FAILED, EXIT_INCOMPLETE

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    codes = [line.split()[0] for line in text.split("exit status:", 1)[1].strip().splitlines()]
    assert codes == [str(c) for c in (EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE)] == ["0", "1", "2", "3"]
    doc = detector.cli.__doc__ or ""
    for name in COMMANDS:
        assert f"- `{name}`" in doc
        assert name in text


# -- backfill output -------------------------------------------------------------------------------------


def test_backfill_writes_plain_lines_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["backfill", "--rule", PORT_RULE_ID, "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS]
    code, _, err = run_cli([*args, "--sink", f"jsonl:{tmp_path / 'f.jsonl'}", "--state", f"file:{tmp_path / 's'}"], capsys)
    assert code == EXIT_OK
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[:2] == ["backfill: 0/24 windows of 1h done", "backfill: 1/24 windows of 1h done"]
    assert lines[-1] == (
        "24 windows from 2026-11-26T00:00:00Z to 2026-11-27T00:00:00Z: "
        f"{_rows_in_candidate_groups()} rows evaluated, 7 finding(s)"
    )


def _rows_in_candidate_groups() -> int:
    from detector.runner import evaluate_window
    from detector.sources import open_source
    from tests.helpers import DAY, RULE

    return evaluate_window(RULE, open_source(f"file:{FILES / 'w3ciislog.jsonl'}"), DAY).rows_evaluated


def test_backfill_draws_a_bar_on_a_terminal() -> None:
    import io

    from detector.cli import backfill_progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = backfill_progress(stream, __import__("datetime").timedelta(hours=1))
    for done in range(3):
        progress(done, 2)
    assert stream.getvalue().count("\r") == 3
    assert stream.getvalue().endswith("] 2/2 windows of 1h\n")


def test_describe_windows_summarises_many() -> None:
    from detector.cli import describe_windows
    from detector.kql import parse_datetime
    from detector.models import Window

    def w(a: str, b: str) -> Window:
        return Window(parse_datetime(a), parse_datetime(b))

    one = w("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z")
    assert describe_windows([one, one]) == "window [2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z)"
    hours = [w(f"2026-11-26T{h:02}:00:00Z", f"2026-11-26T{h + 1:02}:00:00Z") for h in range(23)]
    assert describe_windows(hours) == "23 windows from 2026-11-26T00:00:00Z to 2026-11-26T23:00:00Z"
    assert describe_windows([]) == "no window"


# -- scheduled --dry-run and explain -----------------------------------------------------------------------


def _scheduled_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, now: str = "2026-11-27T00:35:00Z") -> Path:
    monkeypatch.setenv("DETECTOR_SOURCE", f"file:{FILES / 'w3ciislog.jsonl'}")
    monkeypatch.setenv("DETECTOR_STATE", f"file:{tmp_path / 'state'}")
    monkeypatch.setenv("DETECTOR_SINKS", f"jsonl:{tmp_path / 'f.jsonl'}")
    monkeypatch.setenv("DETECTOR_NOW", now)
    monkeypatch.setenv("DETECTOR_RULES", PORT_RULE_ID)  # the fixture day is the port rule's
    return tmp_path / "state"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_plans_reads_and_evaluates_but_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _scheduled_env(monkeypatch, tmp_path, now="2026-11-26T00:35:00Z")
    assert main(["scheduled"]) == EXIT_OK  # a real run: state exists, the day before is done
    capsys.readouterr()
    before = _tree(state)
    sent_before = (tmp_path / "f.jsonl").read_bytes()
    monkeypatch.setenv("DETECTOR_NOW", "2026-11-27T00:35:00Z")
    code, out, _ = run_cli(["scheduled", "--dry-run"], capsys)
    assert code == EXIT_OK
    assert _tree(state) == before
    assert f"would deliver 7 finding(s) to jsonl:{tmp_path / 'f.jsonl'}" in out
    assert "window [2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z) rule 44a555d8-ecee-4a25-95ce-055879b4b14b" in out
    assert "7 finding(s), 7 would be staged" in out
    assert all(e["cIP"] in out for e in expected_findings())  # the table of what would be delivered
    assert (tmp_path / "f.jsonl").read_bytes() == sent_before  # nothing was sent
    # The real run afterwards does exactly what the dry run said.
    code, _, err = run_cli(["scheduled"], capsys)
    assert code == EXIT_OK
    summary = json.loads(err.splitlines()[0])
    assert summary["findings"] == 7 and summary["deliveries"] == {f"jsonl:{tmp_path / 'f.jsonl'}": 7}


@pytest.mark.parametrize("damage", ["{checkpoint: tomorrow", '{"x": ' + "9" * 5000 + "}"])
def test_a_dry_run_over_a_damaged_state_file_names_the_real_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    state = _scheduled_env(monkeypatch, tmp_path, now="2026-11-26T00:35:00Z")
    assert main(["scheduled"]) == EXIT_OK
    (rule_file,) = (state / "rules").glob("44a555d8-*.json")
    rule_file.write_text(damage, encoding="utf-8")
    capsys.readouterr()
    code, _, err = run_cli(["scheduled", "--dry-run"], capsys)
    assert code == EXIT_BAD_INPUT
    assert err.strip().startswith(f"error: state {rule_file}: is not valid JSON"), err
    assert "Traceback" not in err and "detector-dry-run-" not in err
    assert rule_file.read_text(encoding="utf-8") == damage


def test_dry_run_of_an_unchanged_delivered_day_stages_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _scheduled_env(monkeypatch, tmp_path)
    assert main(["scheduled"]) == EXIT_OK
    capsys.readouterr()
    before = _tree(state)
    # Nothing is due and every finding was delivered unchanged: nothing to stage or send.
    code, out, _ = run_cli(["scheduled", "--dry-run"], capsys)
    assert code == EXIT_OK
    assert _tree(state) == before
    assert "would deliver 0 finding(s)" in out


def test_explain_shows_parameters_plan_and_the_exact_kql(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from detector.kql import parse_datetime
    from detector.sources.kql_query import candidates_query
    from tests.helpers import RULE

    state = _scheduled_env(monkeypatch, tmp_path, now="2026-11-26T00:35:00Z")
    assert main(["scheduled"]) == EXIT_OK
    capsys.readouterr()
    before = _tree(state)
    monkeypatch.setenv("DETECTOR_NOW", "2026-11-28T00:35:00Z")
    code, out, _ = run_cli(["explain"], capsys)
    assert code == EXIT_OK
    assert _tree(state) == before  # explain reads state, never writes it
    assert "portThreshold: 30" in out and 'timeBin: "10m"' in out and "maxSetSize: 128" in out
    assert "checkpoint 2026-11-26T00:00:00Z" in out
    planned = [line.strip() for line in out.splitlines() if line.strip().startswith("evaluate ")]
    assert planned == [
        "evaluate [2026-11-26T00:00:00Z, 2026-11-27T00:00:00Z)",
        "evaluate [2026-11-27T00:00:00Z, 2026-11-28T00:00:00Z)",
    ]
    spec = RULE.logic.candidate_spec()
    assert spec is not None
    expected = candidates_query("W3CIISLog", parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"), spec)
    assert "\n".join("    " + line for line in expected.splitlines()) in out
    assert "| project " + ", ".join(RULE.logic.columns) in out  # the details step
    code, out, _ = run_cli(["explain", "--start", "2026-11-20T00:00:00Z", "--end", "2026-11-20T01:00:00Z"], capsys)
    assert code == EXIT_OK and "KQL for [2026-11-20T00:00:00Z, 2026-11-20T01:00:00Z)" in out
    code, _, err = run_cli(["explain", "--start", "2026-11-20T00:00:00Z"], capsys)
    assert code == EXIT_BAD_INPUT and err.startswith("error: setting --end: give both")


@pytest.mark.parametrize("json_sink", ["jsonl:-", "jsonl:/dev/stdout"])
def test_two_sinks_on_standard_output_are_refused(json_sink: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["run", "--source", f"file:{FILES / 'w3ciislog.jsonl'}", *DAY_ARGS, "--sink", "stdout", "--sink", json_sink], capsys
    )
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.strip() == (
        f"error: setting --sink: stdout and {json_sink} would both write to standard output; keep one "
        "(for JSON Lines on standard output, drop stdout: --sink jsonl:- alone)"
    )


HOSTILE_ARGUMENT = "\x1b[31mRED\u202eLTR\u061cx\nNEXT"


@pytest.mark.parametrize(
    "args",
    [
        ["--source", f"{HOSTILE_ARGUMENT}:x"],
        ["--source", f"file:/nonexistent/{HOSTILE_ARGUMENT}"],
        ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", "--sink", HOSTILE_ARGUMENT],
        ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", "--rule", HOSTILE_ARGUMENT],
        ["--source", f"file:{FILES / 'w3ciislog.jsonl'}", "--start", HOSTILE_ARGUMENT, "--end", "2026-11-27T00:00:00Z"],
    ],
    ids=["scheme", "path", "sink", "rule", "start"],
)
def test_an_argument_quoted_in_an_error_is_shown_escaped_on_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    window = [] if "--start" in args else ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z"]
    code, _, err = run_cli(["run", *args, *window], capsys)
    assert code == EXIT_BAD_INPUT
    (line,) = err.strip().split("\n")
    assert line.startswith("error: ") and "RED" in line
    assert not any(c in line for c in "\x1b\u202e\u061c")


@pytest.mark.parametrize("parameter", [HOSTILE_ARGUMENT])
def test_simulate_quotes_a_parameter_it_lacks_escaped(parameter: str, capsys: pytest.CaptureFixture[str]) -> None:
    source, window = f"file:{FILES / 'w3ciislog.jsonl'}", ["--start", "2026-11-26T00:00:00Z", "--end", "2026-11-27T00:00:00Z"]
    code, _, err = run_cli(["simulate", "--source", source, "--rule", PORT_RULE_ID, "--parameter", parameter, *window], capsys)
    assert code == EXIT_BAD_INPUT
    (line,) = err.strip().split("\n")
    assert "has no integer parameter '\\x1b[31mRED\\u202eLTR\\u061cx\\nNEXT'" in line
