"""`backfill` (resumable, with a progress bar) and the scheduled run end to end on Table Storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from detector.config import Settings
from detector.errors import SourceError
from detector.kql import parse_datetime
from detector.models import Row
from detector.runner import run_scheduled
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from tests.conftest import create_state_table
from tests.fakes.server import FakeServer
from tests.helpers import FILES, RULE, expected_findings

# The fixture day and its oracle are the port rule's; the other rules have fixtures of their own.
BACKFILL = [
    "backfill",
    "--rule",
    RULE.path,
    "--source",
    f"file:{FILES / 'w3ciislog.jsonl'}",
    "--start",
    "2026-11-26T00:00:00Z",
    "--end",
    "2026-11-27T00:00:00Z",
]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_backfill_covers_the_range_with_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.jsonl"
    code = main([*BACKFILL, "--sink", f"jsonl:{out}", "--state", f"file:{tmp_path / 'state'}"])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    assert "24/24 windows" in err
    assert len(lines(out)) == len(expected_findings())


def test_interrupted_backfill_resumes_where_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, state = tmp_path / "f.jsonl", f"file:{tmp_path / 'state'}"
    reads: list[str] = []
    failed: list[bool] = []
    original = FileSource.read

    def failing_read(self: FileSource, request: ReadRequest) -> Iterator[Row]:
        reads.append(str(request.window))
        if len(reads) == 11 and not failed:
            failed.append(True)
            raise SourceError(f"the source failed reading {request.window}")
        return original(self, request)

    monkeypatch.setattr(FileSource, "read", failing_read)
    assert main([*BACKFILL, "--sink", f"jsonl:{out}", "--state", state]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "10/24 windows" in err
    assert "error:" in err and "the source failed" in err
    first_part = len(lines(out))  # findings of the 10 finished hours were delivered
    assert 0 < first_part < len(expected_findings())

    reads.clear()
    assert main([*BACKFILL, "--sink", f"jsonl:{out}", "--state", state]) == EXIT_OK
    assert len(reads) == 14  # only the hours not done yet
    records = lines(out)
    assert len(records) == len({r["FindingId"] for r in records}) == len(expected_findings())


def test_backfill_refuses_a_range_that_splits_bins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "backfill",
        "--source",
        f"file:{FILES / 'w3ciislog.jsonl'}",
        "--start",
        "2026-11-26T00:05:00Z",
        "--end",
        "2026-11-27T00:00:00Z",
        "--state",
        f"file:{tmp_path}",
    ]
    assert main(args) == EXIT_BAD_INPUT
    assert "whole" in capsys.readouterr().err


def test_scheduled_runs_on_table_storage_and_never_duplicates(azure_env: FakeServer, azurite_table: str, tmp_path: Path) -> None:
    out = tmp_path / "f.jsonl"
    create_state_table(azurite_table, "scheduledstate")
    settings = Settings.from_env(
        {
            "DETECTOR_RULES": RULE.path,
            "DETECTOR_SOURCE": f"file:{FILES / 'w3ciislog.jsonl'}",
            "DETECTOR_SINKS": f"jsonl:{out}",
            "DETECTOR_STATE": "table",
            "DETECTOR_STATE_TABLE_ENDPOINT": azurite_table,
            "DETECTOR_STATE_TABLE_NAME": "scheduledstate",
            "AZURE_CLIENT_ID": "00000000-1111-2222-3333-444444444444",
            "DETECTOR_NOW": "2026-11-27T00:35:00Z",
        }
    )
    first = run_scheduled(settings, now=datetime.now(UTC))
    assert first.ok, first.to_json()
    assert first.to_json()["lagSeconds"] == {first.rules[0].rule_id: 35 * 60}
    before = out.read_text(encoding="utf-8")
    assert len(lines(out)) == len(expected_findings())
    second = run_scheduled(settings, now=datetime.now(UTC))
    assert second.ok
    assert [r for r in second.rules if r.kind == "window"] == []
    assert second.deliveries == {f"jsonl:{out}": 0}
    assert out.read_text(encoding="utf-8") == before
    assert first.rules[0].window.end == parse_datetime("2026-11-27T00:00:00Z")


def test_scheduled_command_prints_the_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTOR_RULES", RULE.path)
    monkeypatch.setenv("DETECTOR_SOURCE", f"file:{FILES / 'w3ciislog.jsonl'}")
    monkeypatch.setenv("DETECTOR_STATE", f"file:{tmp_path}")
    monkeypatch.setenv("DETECTOR_SINKS", f"jsonl:{tmp_path / 'f.jsonl'}")
    monkeypatch.setenv("DETECTOR_NOW", "2026-11-27T00:35:00Z")
    assert main(["scheduled"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().err.splitlines()[0])
    assert summary["findings"] == len(expected_findings())
    assert summary["rowsEvaluated"] > 0
    assert summary["windows"][0]["start"] == "2026-11-26T00:00:00Z"
