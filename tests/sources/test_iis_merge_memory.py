"""The files of one period read side by side share a memory budget for their blocks."""

from __future__ import annotations

import pytest

from detector.sources import iis as iis_module
from detector.sources.iis import MERGED_BYTES, MERGED_FILES, merged_block_bytes


def test_files_read_side_by_side_share_the_block_budget() -> None:
    sizes = [merged_block_bytes(n) for n in range(1, MERGED_FILES + 1)]
    assert sizes[0] == iis_module.BLOCK_BYTES  # one file: the usual block
    assert sizes == sorted(sizes, reverse=True)  # more files, smaller blocks
    for files, size in enumerate(sizes, start=1):
        assert size >= 1 << 20
        assert size == iis_module.BLOCK_BYTES or files * size <= MERGED_BYTES
    assert merged_block_bytes(MERGED_FILES) * MERGED_FILES <= max(MERGED_BYTES, MERGED_FILES << 20)


def test_a_smaller_block_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 8192)  # what the tests that want many blocks set
    assert {merged_block_bytes(n) for n in range(1, MERGED_FILES + 1)} == {8192}
