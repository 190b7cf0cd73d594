"""Fixtures shared by the source tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from detector.models import Row
from detector.sources.candidates import read_with_pushdown


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the reads whose fast read gave up and ran the plain read instead."""
    import detector.sources.file as file_module

    given_up: list[int] = []

    def spied(fast: Callable[[], Iterator[Row]], plain: Callable[[], Iterator[Row]]) -> Iterator[Row]:
        def counted() -> Iterator[Row]:
            given_up.append(1)
            return plain()

        return read_with_pushdown(fast, counted)

    monkeypatch.setattr(file_module, "read_with_pushdown", spied)
    return given_up


def _calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """One entry per call of owner.name (a module's function), which still runs."""
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def plain_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per JSON Lines block the pushed-down read types row by row."""
    import detector.sources.file as file_module

    return _calls(monkeypatch, file_module, "_plain_rows")


@pytest.fixture
def odd_lines(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The line indexes each JSON Lines block read partly columnar leaves to the plain code, one list per block."""
    import detector.sources.file as file_module

    found: list[list[int]] = []
    completed = file_module._OddLines.completed

    def spy(self: Any, *args: Any) -> Any:
        found.append([index for index, _ in self.odd])
        return completed(self, *args)

    monkeypatch.setattr(file_module._OddLines, "completed", spy)
    return found


@pytest.fixture
def two_pass_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per read that took the two-pass strategy (input out of time order)."""
    import detector.sources.candidates as candidates_module

    return _calls(monkeypatch, candidates_module, "_two_pass")


@pytest.fixture(params=["msgspec", "polars"])
def key_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which parse reads a whole JSON Lines block's keys: msgspec first, as a read does
    (detector/sources/keys_json.py), or polars' alone, which reads every block msgspec cannot (so its
    guards are tested on the same lines)."""
    import detector.sources.file as file_module

    if request.param == "polars":
        monkeypatch.setattr(file_module, "decoded_keys", lambda *args: None)
    return str(request.param)
