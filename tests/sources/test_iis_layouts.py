"""IIS folders whose servers write a directive block every few entries and switch between layouts.

The first pass groups a block's runs of entries by how they read (the #Fields in force, and #Date for a
log without a date field), reads each group as one polars frame or, when it is small, types it with the
other small ones by the plain code, and hands the finder one block for all of them. Whatever the mix of
layouts, directives, NUL padding and malformed entries, the pushed-down read must give the plain read's
results, rows read and skipped lines.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import InputError
from detector.sources import ReadRequest
from detector.sources import iis as iis_module
from detector.sources.iis import IisLogSource
from tests.sources.test_candidates import HIGH_PORT, WINDOW, _iis_line, _random_rows, _scans

LAYOUTS = [
    "date time s-ip cs-method cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-substatus sc-win32-status",
    "date time c-ip s-ip s-port cs-method cs-uri-query sc-status sc-win32-status time-taken",
    "time date s-port c-ip s-ip cs-method",  # another order
    "time s-ip cs-method s-port c-ip sc-status",  # no date field: #Date gives it
]


@st.composite
def _log(draw: st.DrawFn) -> tuple[list[str], str]:
    """A day's entries in time order under directive blocks of 1 to 12 entries, each block's #Fields one
    of LAYOUTS, with a few oddities: NUL padding, an entry with a field too many, a port that is no
    number, a #Date for another day, a BOM before an entry or a directive, a last line cut without its
    line break."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    rows = sorted(_random_rows(rng, draw(st.integers(20, 300))) + _scans(rng), key=lambda row: row["TimeGenerated"])
    layouts = draw(st.lists(st.sampled_from(range(len(LAYOUTS))), min_size=1, max_size=4, unique=True))
    lines = ["#Software: Microsoft Internet Information Services 10.0", "#Version: 1.0"]
    left = 0
    for row in rows:
        if left == 0:
            fields, left = LAYOUTS[rng.choice(layouts)], rng.randint(1, 12)
            day = row["TimeGenerated"][:10] if rng.random() < 0.95 else "2026-11-25"
            bom = "\ufeff" if rng.random() < 0.03 else ""  # files joined together: each part's BOM
            lines += [f"{bom}#Date: {day} 00:00:00", f"#Fields: {fields}"]
        line = _iis_line(row, fields)
        odd = rng.random()
        if odd < 0.01:
            line += " extra"
        elif odd < 0.02:
            line = line.replace(" ", " 8o8o ", 1) if "s-port" in fields else line
        elif odd < 0.03:
            line = "\x00" * rng.randint(1, 40) + line
        elif odd < 0.04:
            line = "\ufeff" + line  # a BOM before an entry (one that starts a run, too)
        lines.append(line)
        left -= 1
    if draw(st.booleans()):
        lines.append(lines[-1][: len(lines[-1]) // 2])  # cut: no line break after it
        return lines, "cut"
    return lines, "whole"


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read(folder: Path, pushdown: bool, strict: bool) -> tuple[Any, ...]:
    """The port rule's findings, rows read and skipped lines (or the error a strict read stops at), and
    the warnings logged, in order."""
    logic = HIGH_PORT.logic
    request = ReadRequest(WINDOW, logic.columns, logic.required_columns, logic.candidate_spec() if pushdown else None)
    source = IisLogSource(folder, "web01", strict=strict)
    warnings = _Warnings()
    logger = logging.getLogger("detector")
    logger.addHandler(warnings)
    try:
        rows = list(source.read(request))
    except InputError as exc:
        return ("error", str(exc), warnings.messages)
    finally:
        logger.removeHandler(warnings)
    stats = source.read_stats()
    findings = json.dumps(logic.evaluate(rows, WINDOW), default=str, sort_keys=True)
    return (findings, stats["rowsRead"], stats["skippedByFile"], warnings.messages)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    _log(),
    st.sampled_from([4096, 1 << 16, 1 << 20]),
    st.sampled_from([300, 16 << 10]),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
)
def test_fast_and_plain_reads_agree_whatever_the_layouts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    log: tuple[list[str], str],
    block: int,
    small: int,
    line_break: str,
    strict: bool,
) -> None:
    """Findings, rows read, skipped lines and the warnings about them, in the plain read's order (a
    strict read: the same error, at the same line)."""
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", block)
    monkeypatch.setattr(iis_module, "SMALL_RUN_BYTES", small)
    lines, end = log
    folder = tmp_path / "W3SVC1"
    folder.mkdir(exist_ok=True)
    text = line_break.join(lines) + (line_break if end == "whole" else "")
    (folder / "u_ex261126.log").write_bytes(text.encode("utf-8"))
    assert _read(tmp_path, True, strict) == _read(tmp_path, False, strict)


@pytest.mark.parametrize("strict", [False, True])
def test_a_bom_before_the_entry_that_starts_a_columnar_run_is_read_as_the_plain_read_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict: bool
) -> None:
    # polars drops a BOM at the start of the bytes it is given; the plain read keeps it in the date.
    monkeypatch.setattr(iis_module, "SMALL_RUN_BYTES", 300)
    rng = random.Random(7)
    rows = sorted(_random_rows(rng, 400) + _scans(rng), key=lambda row: row["TimeGenerated"])
    fields = LAYOUTS[0]
    lines = ["#Software: Microsoft Internet Information Services 10.0", f"#Fields: {fields}"]
    lines += [_iis_line(row, fields) for row in rows]
    lines[2] = "\ufeff" + lines[2]
    folder = tmp_path / "W3SVC1"
    folder.mkdir()
    (folder / "u_ex261126.log").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    plain = _read(tmp_path, False, strict)
    assert plain[0] == "error" if strict else plain[2] == {str(folder / "u_ex261126.log"): 1}
    assert _read(tmp_path, True, strict) == plain
