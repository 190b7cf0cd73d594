"""Fixtures shared by the source tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
