"""Small helpers shared by tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from detector.config import Settings
from detector.kql import format_datetime, parse_datetime
from detector.models import Finding, Window
from detector.rules import DEFAULT_RULES_DIR, Rule, load_rule
from detector.sources import Source, open_source

ROOT = Path(__file__).resolve().parent.parent  # the repository
FILES = ROOT / "tests" / "files"
DAY = Window(parse_datetime("2026-11-26T00:00:00Z"), parse_datetime("2026-11-27T00:00:00Z"))
RULE: Rule = load_rule(DEFAULT_RULES_DIR / "high_port_count_by_client_ip.yaml")


def expected_findings(computer: str | None = None) -> list[dict[str, Any]]:
    """The oracle written by tests/files/generate.py from how the scenarios were planted."""
    expected = json.loads((FILES / "expected_findings.json").read_text(encoding="utf-8"))
    return [e for e in expected if computer is None or e["Computer"] == computer]


def summarize(findings: list[Finding]) -> list[dict[str, Any]]:
    """The oracle's columns of each finding, in output order."""
    keys = ("TimeGenerated", "cIP", "Computer", "sIP", "portCount", "ConnectionsCount")
    return [{k: format_datetime(f.columns[k]) if k == "TimeGenerated" else f.columns[k] for k in keys} for f in findings]


def open_for_test(spec: str, computer: str = "", strict: bool = False) -> Source:
    """The source a spec names, with the settings a run would build for it (and an IIS computer name)."""
    return open_source(spec, replace(Settings.from_env({"DETECTOR_SOURCE": spec}), computer=computer, strict=strict))
