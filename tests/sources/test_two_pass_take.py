"""The two-pass read (input in no time order) takes the rows of candidate groups, and next to none else.

It holds a 32-bit cell (a hash of bin and group) per record and takes the records whose cell is a
candidate's. It used to hold the cell's low 16 bits: among ~2,000 candidates, 3% of all other records
shared them, and on the held-out day a third of the rows handed to the rule were of groups that could
not fire (the rule dropped them, so findings were right, at the cost of their json.loads and typing).
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest

import detector.sources.file as file_module
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from tests.sources.test_candidates import DAY, HIGH_PORT, WINDOW

LOGIC = HIGH_PORT.logic


def test_the_rule_gets_the_candidate_groups_rows_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_pass_reads: list[int]
) -> None:
    """70,000 one-row groups of other clients and one scanner of 30 ports, shuffled: the rule is handed
    the scanner's 30 rows. With 16-bit cells one other row in 65,536 shares the scanner's cell (two
    came along here); with 32-bit cells, one in 2^32."""
    monkeypatch.setattr(file_module, "BLOCK_BYTES", 1 << 16)  # many blocks, so that one pass meets rows of finished bins
    rng = random.Random(7)
    rows = [
        {
            "TimeGenerated": (DAY + timedelta(seconds=rng.randrange(86_400))).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Computer": "web01",
            "sIP": "10.0.0.4",
            "cIP": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            "sPort": 443,
        }
        for i in range(70_000)
    ]
    scan = DAY + timedelta(hours=5)
    rows += [
        {
            "TimeGenerated": f"{scan:%Y-%m-%dT%H:%M}:{i:02d}Z",
            "Computer": "web01",
            "sIP": "10.0.0.4",
            "cIP": "198.51.100.9",
            "sPort": 1000 + i,
        }
        for i in range(30)
    ]
    rng.shuffle(rows)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    request = ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec())
    source = FileSource(path)
    taken = list(source.read(request))
    assert two_pass_reads  # rows in no time order: the two-pass read
    assert sorted(row["sPort"] for row in taken) == list(range(1000, 1030))
    assert source.read_stats()["rowsRead"] == 70_030
    assert len(LOGIC.evaluate(taken, WINDOW)) == 1
