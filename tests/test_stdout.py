"""The stdout table: fitted to the terminal, generic (the rule's presentation), in the rule's order, safe to print."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.evaluate import evaluate
from detector.sinks.stdout import StdoutSink, in_rule_order, render
from detector.sources import ReadRequest, open_source
from detector.state.file import FileStateStore
from tests.helpers import DAY, FILES, ROOT, RULE

FINDINGS = evaluate(
    RULE,
    open_source(f"file:{FILES / 'w3ciislog.jsonl'}").read(ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns)),
    DAY,
)
SOURCE = (ROOT / "detector" / "sinks" / "stdout.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200, 400])
def test_every_line_fits_the_width_and_every_finding_is_there(width: int) -> None:
    text = render(FINDINGS, width)
    assert all(len(line) <= width for line in text.splitlines()), max(text.splitlines(), key=len)
    unwrapped = " ".join(text.split())
    assert all(f.id in unwrapped.replace(": ", ":") or f.id in text for f in FINDINGS)
    assert unwrapped.endswith(f"{len(FINDINGS)} finding(s) of {RULE.name}.")


def test_a_wide_terminal_gets_one_line_per_finding() -> None:
    # As wide as the widest finding's full row: nothing needs shortening, so one line each plus header and total.
    lines = render(FINDINGS, 100_000).splitlines()
    assert len(lines) == 1 + len(FINDINGS) + 1
    assert lines[0].split()[:2] == ["time", "finding"]


def test_the_sink_names_no_rule_column() -> None:
    for column in RULE.logic.output_columns:
        assert f'"{column}"' not in SOURCE


def test_findings_from_the_outbox_come_out_in_the_rule_order(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.stage(["stdout"], FINDINGS)
    pending = [e.finding for e in store.pending("stdout")]
    assert [f.id for f in pending] != [f.id for f in FINDINGS]  # the outbox keeps its own order
    assert [f.id for f in in_rule_order(pending)] == [f.id for f in FINDINGS]
    text = render(pending, 120)
    assert sorted(FINDINGS, key=lambda f: text.index(f.id)) == FINDINGS


def test_terminal_controls_in_values_are_shown_escaped() -> None:
    hostile = dataclasses.replace(
        FINDINGS[0], columns={**FINDINGS[0].columns, "set_csUserAgent": ["\x1b[2J\x1b]0;pwned\x07", "a\u202eb"]}
    )
    stream = io.StringIO()
    StdoutSink(stream, width=100_000).deliver([hostile])
    text = stream.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[2J" in text and "\\u202e" in text


def test_no_findings() -> None:
    stream = io.StringIO()
    StdoutSink(stream).deliver([])
    assert stream.getvalue() == "No findings.\n"


def test_rank_survives_the_state_round_trip() -> None:
    finding = FINDINGS[3]
    assert finding.rank == 3
    again = type(finding).from_state(finding.to_state())
    assert again == finding
    old = finding.to_state()
    del old["rank"]  # state written before findings carried a rank still loads
    assert type(finding).from_state(old).rank == 0
    assert datetime(2026, 11, 26, tzinfo=UTC) <= (finding.first_activity or DAY.start)
