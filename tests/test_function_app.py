"""The Azure Function: indexed as the host would, and called with a real TimerRequest."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from detector.config import SETTINGS
from detector.errors import ConfigError
from tests.helpers import FILES, ROOT, RULE, expected_findings

SetEnv = Callable[..., None]


@pytest.fixture(scope="module")
def indexed() -> dict[str, Any]:
    # get_functions() may be called once per app (it remembers names); do it once for the module.
    return {str(f.get_function_name()): f for f in function_app.app.get_functions()}


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SetEnv:
    """Replace every detector setting with `values`; the state store lives in this test's folder."""

    def apply(**values: str) -> None:
        for setting in SETTINGS:
            monkeypatch.delenv(setting.name, raising=False)
        monkeypatch.setenv("DETECTOR_STATE", f"file:{tmp_path / 'state'}")
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return apply


def call(indexed: dict[str, Any], timer: TimerRequest | None = None) -> None:
    indexed["detect"].get_user_function()(timer or TimerRequest())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
    assert all(f.isdigit() for f in fields[:3])


def test_timer_run_evaluates_the_latest_whole_window(
    indexed: dict[str, Any], set_env: SetEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "findings.jsonl"
    set_env(
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{out}",
        DETECTOR_INGESTION_DELAY="25m",
        DETECTOR_NOW="2026-11-27T00:34:59Z",
    )
    caplog.set_level(logging.INFO)
    call(indexed, TimerRequest(past_due=True))
    records = read_jsonl(out)
    # First run: the rule's queryPeriod (1d) ending at now - delay = 00:09:59 floored to 00:00.
    assert {(r["WindowStart"], r["WindowEnd"]) for r in records} == {("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z")}
    assert len(records) == len(expected_findings())
    assert "past due" in caplog.text
    summary = next(r for r in caplog.records if r.getMessage().startswith("detector.summary"))
    data = json.loads(summary.getMessage().split(" ", 1)[1])
    assert data["findings"] == len(records)
    assert data["deliveries"] == {f"jsonl:{out}": len(records)}
    assert data["ok"] is True


def test_window_never_ends_inside_a_bin(indexed: dict[str, Any], set_env: SetEnv, tmp_path: Path) -> None:
    out = tmp_path / "findings.jsonl"
    set_env(
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{out}",
        DETECTOR_INGESTION_DELAY="0m",
        DETECTOR_NOW="2026-11-26T10:07:00Z",
    )
    call(indexed)
    records = read_jsonl(out)
    # The 10:00 bin is not whole at 10:07, so the 10:00 scan is not evaluated yet (half of it could be missing).
    assert {r["WindowEnd"] for r in records} == {"2026-11-26T10:00:00Z"}
    assert "203.0.113.9" not in {r["cIP"] for r in records}
    # The next run, after the bin is whole, picks it up from the checkpoint.
    set_env(
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{out}",
        DETECTOR_INGESTION_DELAY="0m",
        DETECTOR_NOW="2026-11-26T10:10:00Z",
    )
    call(indexed)
    assert "203.0.113.9" in {r["cIP"] for r in read_jsonl(out)}


def test_local_settings_template_runs_on_fixture_data(
    indexed: dict[str, Any], set_env: SetEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = json.loads((ROOT / "local.settings.json.template").read_text(encoding="utf-8"))["Values"]
    set_env(**{k: v for k, v in values.items() if k.startswith("DETECTOR_") and k != "DETECTOR_STATE"})
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DETECTOR_SINKS", values["DETECTOR_SINKS"].replace("out/findings.jsonl", str(tmp_path / "f.jsonl")))
    call(indexed)
    assert len(read_jsonl(tmp_path / "f.jsonl")) == len(expected_findings())


def test_bad_setting_fails_the_invocation_with_its_name(indexed: dict[str, Any], set_env: SetEnv) -> None:
    set_env(DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}", DETECTOR_INGESTION_DELAY="soon")
    with pytest.raises(ConfigError, match="DETECTOR_INGESTION_DELAY"):
        call(indexed)
    set_env()
    with pytest.raises(ConfigError, match="DETECTOR_SOURCE: is required"):
        call(indexed)


def test_failed_delivery_fails_the_invocation(indexed: dict[str, Any], set_env: SetEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    set_env(
        DETECTOR_SOURCE=f"file:{FILES / 'w3ciislog.jsonl'}",
        DETECTOR_SINKS=f"jsonl:{blocker / 'findings.jsonl'}",
        DETECTOR_NOW="2026-11-27T00:40:00Z",
    )
    with pytest.raises(RuntimeError, match="run failed"):
        call(indexed)


def test_importing_the_app_does_not_import_azure_sdks() -> None:
    code = (
        "import sys, function_app; "
        "heavy = ('azure.monitor', 'azure.identity', 'azure.data', 'yaml', 'polars'); "
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_past_due_timer_catches_up_every_missed_window(
    indexed: dict[str, Any], set_env: SetEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "findings.jsonl"
    source, rules = f"file:{FILES / 'w3ciislog.jsonl'}", RULE.path  # the fixture day is the port rule's
    common = {"DETECTOR_SOURCE": source, "DETECTOR_SINKS": f"jsonl:{out}", "DETECTOR_RULES": rules}
    set_env(**common, DETECTOR_NOW="2026-11-25T00:35:00Z")
    call(indexed)  # the last run before an outage: [11-24, 11-25)
    set_env(**common, DETECTOR_NOW="2026-11-28T00:35:00Z")  # three days later
    caplog.set_level(logging.INFO)
    call(indexed, TimerRequest(past_due=True))
    summary = json.loads(next(r for r in caplog.records if r.getMessage().startswith("detector.summary")).getMessage()[17:])
    assert [w["start"] for w in summary["windows"] if w["kind"] == "window"] == [
        "2026-11-25T00:00:00Z",
        "2026-11-26T00:00:00Z",
        "2026-11-27T00:00:00Z",
    ]
    ips = {r["cIP"] for r in read_jsonl(out)}
    assert {"203.0.113.50", "203.0.113.52"} <= ips  # scans just before and just after the fixture day
