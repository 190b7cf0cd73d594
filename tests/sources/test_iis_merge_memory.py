"""The files of one period read side by side share a memory budget for their blocks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.generate import DAY, write_day
from detector.models import Window
from detector.rules import load_rules
from detector.runner import evaluate_window
from detector.sources import iis as iis_module
from detector.sources.iis import MERGED_BYTES, MERGED_FILES, IisLogSource, merged_block_bytes


def test_files_read_side_by_side_share_the_block_budget() -> None:
    sizes = [merged_block_bytes(n) for n in range(1, MERGED_FILES + 1)]
    assert sizes[0] == iis_module.BLOCK_BYTES  # one file: the usual block
    assert sizes == sorted(sizes, reverse=True)  # more files, smaller blocks
    assert sizes[-1] < iis_module.BLOCK_BYTES
    for files, size in enumerate(sizes, start=1):
        assert size >= 1 << 20
        assert size == iis_module.BLOCK_BYTES or files * size <= MERGED_BYTES


def test_a_smaller_block_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 8192)  # what the tests that want many blocks set
    assert {merged_block_bytes(n) for n in range(1, MERGED_FILES + 1)} == {8192}


def test_each_merged_file_is_read_in_its_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark generator's folder of four sites, one log each for the day: each of the four is cut
    in blocks of merged_block_bytes(4), and the findings do not depend on the share."""
    day = write_day(6_000, tmp_path / "day")
    logs = sorted(day.iis_many.rglob("*.log"))
    assert len(logs) == 4
    seen: list[int] = []
    original = iis_module._scanned_blocks

    def spy(handle: Any, block_bytes: int) -> Any:
        seen.append(block_bytes)
        return original(handle, block_bytes)

    monkeypatch.setattr(iis_module, "_scanned_blocks", spy)
    rule = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0]

    def findings() -> list[dict[str, Any]]:
        run = evaluate_window(rule, IisLogSource(day.iis_many, "bench-iis"), Window(DAY, DAY + timedelta(days=1)))
        return [f.to_json() for f in run.findings]

    shared = findings()
    assert seen == [merged_block_bytes(4)] * 4 and seen[0] < iis_module.BLOCK_BYTES
    seen.clear()
    monkeypatch.setattr(iis_module, "MERGED_BYTES", 4 * iis_module.BLOCK_BYTES)  # each file its whole block
    assert findings() == shared and shared
    assert seen == [iis_module.BLOCK_BYTES] * 4
