"""write_atomically: the old content or the new, never a part; pieces written one by one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.atomicfile import write_atomically


def test_text_bytes_and_pieces_write_the_same_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    lines = ['{"a": "é"}\n', '{"b": "\\ud800"}\n', "last\n"]
    write_atomically(target, "".join(lines))
    whole = target.read_bytes()
    write_atomically(target, "".join(lines).encode("utf-8"))
    assert target.read_bytes() == whole
    write_atomically(target, iter(lines))
    assert target.read_bytes() == whole == "".join(lines).encode("utf-8")
    write_atomically(target, iter([]))
    assert target.read_bytes() == b""
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_pieces_that_fail_midway_leave_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    write_atomically(target, "old\n")

    def pieces() -> Iterator[str]:
        yield "new line 1\n"
        yield "x" * (1 << 20)  # written to the temporary file before the failure
        raise RuntimeError("a finding that cannot be rendered")

    with pytest.raises(RuntimeError, match="cannot be rendered"):
        write_atomically(target, pieces())
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_a_piece_utf8_cannot_carry_fails_before_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_atomically(target, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, iter(["fine\n", "\ud800\n"]))
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.one_of(st.text(), st.integers(), st.none()), max_size=4), max_size=5))
def test_the_jsonl_sinks_file_lines_are_its_stream_lines(records: list[dict[str, object]]) -> None:
    """The sink's file is written from _encoded_lines, its streams from _line: the same bytes, lone
    surrogates (which UTF-8 cannot carry) escaped in both."""
    from detector.sinks.jsonl import _encoded_lines, _line

    assert b"".join(_encoded_lines(records)) == "".join(_line(r) for r in records).encode("utf-8")
