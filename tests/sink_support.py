"""Findings for the sink tests, produced by the real engine from the bundled fixture rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache

from detector.evaluate import evaluate
from detector.models import Finding, Row
from detector.rules import Rule, load_rules
from detector.sources import ReadRequest, open_source
from tests.helpers import DAY, FILES

FIXTURE = FILES / "w3ciislog.jsonl"
WORKSPACE = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-soc"
    "/providers/Microsoft.OperationalInsights/workspaces/law-soc"
)
CLIENT_ID = "5b8a1f0e-7c1d-4a36-9d4e-0f2b6c3a9e11"
DCR_ID = "dcr-00112233445566778899aabbccddeeff"


@lru_cache(maxsize=1)
def the_rule() -> Rule:
    """The port rule: the fixture day and these sink tests are written for its findings."""
    (rule,) = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")
    return rule


@lru_cache(maxsize=1)
def fixture_rows() -> tuple[Row, ...]:
    logic = the_rule().logic
    source = open_source(f"file:{FIXTURE}")
    return tuple(source.read(ReadRequest(DAY, logic.columns, logic.required_columns)))


def findings(keep: Callable[[Row], bool] | None = None) -> list[Finding]:
    """The findings of the fixture day; `keep` drops rows first (to play late-arriving data)."""
    rows = fixture_rows() if keep is None else tuple(r for r in fixture_rows() if keep(r))
    return evaluate(the_rule(), rows, DAY)


def late_rows_of(client_ip: str, count: int) -> Callable[[Row], bool]:
    """A filter that holds back the last `count` rows of one client (they 'arrive late')."""
    rows = sorted((r for r in fixture_rows() if r["cIP"] == client_ip), key=lambda r: (r["TimeGenerated"], r["sPort"]))
    late = {id(r) for r in rows[-count:]}
    return lambda row: id(row) not in late


def bin_of(finding: Finding) -> tuple[datetime, datetime]:
    start = finding.columns["TimeGenerated"]
    return start, start + timedelta(minutes=10)
