"""The Azure Function: indexed as the host would, and called with a real TimerRequest."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from detector.config import SETTINGS
from tests.helpers import FILES, expected_findings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    # get_functions() may be called once per app (it remembers names); do it once for the module.
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def test_one_timer_function_with_schedule_from_a_setting(indexed: dict[str, Any]) -> None:
    assert list(indexed) == ["detect"]
    binding = json.loads(indexed["detect"].get_function_json())["bindings"]
    assert binding == [
        {
            "direction": "IN",
            "type": "timerTrigger",
            "name": "timer",
            "schedule": "%DETECTOR_SCHEDULE%",
            "runOnStartup": False,
            "useMonitor": True,
        }
    ]


def test_schedule_default_is_a_valid_six_field_ncrontab() -> None:
    schedule = next(s for s in SETTINGS if s.name == "DETECTOR_SCHEDULE").default
    assert schedule is not None
    fields = schedule.split()
    assert len(fields) == 6
    assert fields[0].isdigit() and fields[1].isdigit() and fields[2].isdigit()


def _user_function(indexed: dict[str, Any]) -> Callable[[TimerRequest], None]:
    function: Callable[[TimerRequest], None] = indexed["detect"].get_user_function()
    return function


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_timer_run_evaluates_the_latest_whole_window(
    indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "findings.jsonl"
    _env(
        monkeypatch,
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{out}",
        DETECTOR_INGESTION_DELAY="25m",
        DETECTOR_NOW="2026-11-27T00:34:59Z",
    )
    caplog.set_level(logging.INFO)
    _user_function(indexed)(TimerRequest(past_due=True))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # now - delay = 00:09:59 -> floored to 00:00, so the window is exactly the fixture day.
    assert {(r["WindowStart"], r["WindowEnd"]) for r in records} == {("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z")}
    assert len(records) == len(expected_findings())
    assert "past due" in caplog.text
    summary = next(r for r in caplog.records if r.getMessage().startswith("detector.summary"))
    assert json.loads(summary.getMessage().split(" ", 1)[1])["findings"] == len(records)


def test_window_never_ends_inside_a_bin(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = tmp_path / "findings.jsonl"
    _env(
        monkeypatch,
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{out}",
        DETECTOR_INGESTION_DELAY="0m",
        DETECTOR_NOW="2026-11-26T10:07:00Z",
    )
    _user_function(indexed)(TimerRequest())
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # The 10:00 bin is not whole yet at 10:07, so the 10:00 scan is not evaluated (half of it could be missing).
    assert {r["WindowEnd"] for r in records} == {"2026-11-26T10:00:00Z"}
    assert "203.0.113.9" not in {r["cIP"] for r in records}


def test_local_settings_template_runs_on_fixture_data(
    indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = json.loads((ROOT / "local.settings.json.template").read_text(encoding="utf-8"))["Values"]
    _env(monkeypatch, **{k: v for k, v in values.items() if k.startswith("DETECTOR_")})
    monkeypatch.chdir(ROOT)
    sinks = values["DETECTOR_SINKS"].replace("jsonl:out/findings.jsonl", f"jsonl:{tmp_path / 'f.jsonl'}")
    monkeypatch.setenv("DETECTOR_SINKS", sinks)
    _user_function(indexed)(TimerRequest())
    assert len((tmp_path / "f.jsonl").read_text(encoding="utf-8").splitlines()) == len(expected_findings())


def test_bad_setting_fails_the_invocation_with_its_name(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}", DETECTOR_INGESTION_DELAY="soon")
    with pytest.raises(Exception, match="DETECTOR_INGESTION_DELAY"):
        _user_function(indexed)(TimerRequest())
    _env(monkeypatch)
    with pytest.raises(Exception, match="DETECTOR_SOURCE: is required"):
        _user_function(indexed)(TimerRequest())


def test_failed_delivery_fails_the_invocation(indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    _env(
        monkeypatch,
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{blocker / 'findings.jsonl'}",
        DETECTOR_NOW="2026-11-27T00:40:00Z",
    )
    with pytest.raises(RuntimeError, match="deliveries failed"):
        _user_function(indexed)(TimerRequest())


def test_importing_the_app_does_not_import_azure_sdks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, function_app; "
        "print(sorted(m for m in sys.modules if m.startswith(('azure.monitor', 'azure.identity', 'yaml'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
