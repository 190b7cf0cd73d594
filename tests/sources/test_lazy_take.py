"""The rows of candidate groups are typed as the rule takes them, never all held at once.

A day whose every group is a candidate (clients scanning hundreds of ports: the attack the port rule
is for) used to be typed whole before the rule saw its first row: 1,000,000 such JSON Lines rows peaked
at 1.1 GB of RSS (232 MB now). Measured here with tracemalloc, which sees Python's objects (the typed
rows) and not polars' buffers: what is held when the rule is handed its first row must be well under
what the day's rows cost held together, for every reader that pushes down (JSON Lines in time
order and in no order, a saved response, an IIS log).
"""

from __future__ import annotations

import json
import random
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import detector.sources.file as file_module
import detector.sources.iis as iis_module
import detector.sources.response as response_module
from detector.sources import ReadRequest, Source, candidates
from detector.sources.file import FileSource
from tests.sources.test_candidates import DAY, HIGH_PORT, IIS_FIELDS_A, IIS_FIELDS_B, WINDOW, _iis_line, _write_iis

LOGIC = HIGH_PORT.logic
CLIENTS, PORTS = 60, 80  # every client reaches 80 ports in its bin: every group is a candidate


def _scan_rows(shuffle: bool) -> list[dict[str, Any]]:
    rows = [
        {
            "TimeGenerated": f"{DAY + timedelta(minutes=10 * client, seconds=port):%Y-%m-%dT%H:%M:%SZ}",
            "Computer": "web01",
            "sIP": "10.0.0.4",
            "cIP": f"198.51.100.{client}",
            "sPort": 1000 + port,
            "csMethod": "GET",
            "csUriStem": f"/probe/{client}/{port}",
            "csUriQuery": "q=" + "x" * 300,  # a long value, as real requests carry
            "csUserAgent": "Mozilla/5.0+(compatible;+scanner)",
            "scStatus": "404",
            "scSubStatus": "0",
            "scWin32Status": "2",
        }
        for client in range(CLIENTS)
        for port in range(PORTS)
    ]
    if shuffle:
        random.Random(3).shuffle(rows)
    return rows


def _jsonl(tmp_path: Path, shuffle: bool) -> Source:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _scan_rows(shuffle)), encoding="utf-8")
    return FileSource(path)


def _jsonl_mixed_ends(tmp_path: Path, shuffle: bool) -> Source:
    """JSON Lines whose lines end in LF and CRLF both (files joined together): the blocks keep no line
    ends, and their candidates' lines are cut again from the block's bytes. Every other line is a
    request of the hour before the window, never taken: a block may start with a line that is not."""
    path = tmp_path / "rows.jsonl"
    before = f"{DAY - timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}"
    one_offs = ({**row, "TimeGenerated": before} for row in _scan_rows(shuffle))
    rows = [row for pair in zip(_scan_rows(shuffle), one_offs, strict=True) for row in pair]
    lines = [json.dumps(row) + ("\r\n" if number % 7 == 0 else "\n") for number, row in enumerate(rows)]
    path.write_text("".join(lines), encoding="utf-8", newline="")
    return FileSource(path)


def _response(tmp_path: Path, shuffle: bool) -> Source:
    rows = _scan_rows(shuffle)
    names = list(rows[0])
    columns = [{"name": n, "type": "int" if n == "sPort" else "string"} for n in names]
    body = {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": [[r[n] for n in names] for r in rows]}]}
    path = tmp_path / "response.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    return FileSource(path)


def _array(tmp_path: Path, shuffle: bool) -> Source:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(_scan_rows(shuffle)), encoding="utf-8")
    return FileSource(path)


def _iis(tmp_path: Path, shuffle: bool) -> Source:
    head = ["#Software: Microsoft Internet Information Services 10.0", f"#Fields: {IIS_FIELDS_A}"]
    return _write_iis(tmp_path, head + [_iis_line(row, IIS_FIELDS_A) for row in _scan_rows(shuffle)])


def _iis_headers(tmp_path: Path, shuffle: bool) -> Source:
    """A log whose server switches between two layouts every few entries: in each block one layout's runs
    are read as a frame, the other's typed row by row (too few for a frame), the two as one block."""
    lines = []
    for number, row in enumerate(_scan_rows(shuffle)):
        fields = IIS_FIELDS_B if number % 50 >= 40 else IIS_FIELDS_A
        if number % 50 in (0, 40):
            lines += ["#Software: Microsoft Internet Information Services 10.0", f"#Fields: {fields}"]
        lines.append(_iis_line(row, fields))
    return _write_iis(tmp_path, lines)


SHAPES = {
    "JSON Lines in time order": (_jsonl, False),
    "JSON Lines in no order": (_jsonl, True),
    "JSON Lines ending in LF and CRLF": (_jsonl_mixed_ends, False),
    "a saved response": (_response, False),
    "a JSON array in no order": (_array, True),
    "an IIS log": (_iis, False),
    "an IIS log in no order (the two-pass read)": (_iis, True),
    "an IIS log switching layouts every few entries": (_iis_headers, False),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_scan_days_rows_are_typed_as_the_rule_takes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    # Small blocks, so that the day is many blocks (the rows of one block are typed together).
    monkeypatch.setattr(file_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 200)
    monkeypatch.setattr(candidates, "HOLD_ROWS", 16)  # rows typed row by row: fewer than a block's
    write, shuffle = SHAPES[shape]
    source = write(tmp_path, shuffle)
    request = ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec())
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        rows = list(source.read(request))  # first, so that what the read imports is not counted below
        rows_bytes = tracemalloc.get_traced_memory()[0] - before  # what the typed rows cost, held together
        read = source.read_stats()["rowsRead"]
        count, findings = len(rows), len(LOGIC.evaluate(rows, WINDOW))
        del rows
        start, _ = tracemalloc.get_traced_memory()
        reading = source.read(request)
        next(reading)  # the first pass is over: every candidate record is known
        at_first_row = tracemalloc.get_traced_memory()[0] - start
        taken = 1 + sum(1 for _row in reading)
    finally:
        tracemalloc.stop()
    assert taken == count == read == source.read_stats()["rowsRead"] == CLIENTS * PORTS
    assert findings == CLIENTS
    # Held when the rule has its first row: that row's block, not every row of the day.
    assert at_first_row < rows_bytes / 4, f"{at_first_row:,} B held at the first row, the rows held together {rows_bytes:,} B"


def test_a_shared_read_in_time_order_holds_few_blocks_whatever_a_rule_admits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binned rules read together: the failed-logon rules admit a few rows of each block, far fewer
    than a finder waits for before it decides (candidates.FINISH_ROWS), and the one-pass read used to
    hold every block with one of them until the end of the day (85 of the benchmark day's 85 blocks;
    339 MB of peak RSS for the three rules against 217 MB now). It now has the finders decide what they
    may once it holds HELD_BLOCKS."""
    from detector.pushdown import SharedSpec
    from tests.sources.test_candidates import RULES

    monkeypatch.setattr(file_module, "BLOCK_BYTES", 1 << 13)
    rows = []
    for second in range(0, 86_400, 12):
        row = {"TimeGenerated": f"{DAY + timedelta(seconds=second):%Y-%m-%dT%H:%M:%SZ}", "Computer": "web01",
               "sIP": "10.0.0.4", "cIP": f"203.0.113.{second % 200}", "sPort": 443, "csUserName": "alice",
               "scStatus": "401" if second % 600 == 0 else "200", "scSubStatus": "0", "scWin32Status": "0"}  # fmt: skip
        rows.append(row)
        if second == 43_200:  # noon: a burst of 25 failed logons in a minute, which the logon rules report
            rows += [{**row, "cIP": "198.51.100.7", "scStatus": "401"} for _ in range(25)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    alive: list[Any] = []  # weak references to every block the reader made
    most = [0]
    made = file_module._blocks

    def watched(*args: Any) -> Any:
        import weakref

        for block in made(*args):
            # Blocks not yet taken still hold their key frame (a taken block has dropped it).
            most[0] = max(most[0], sum(1 for ref in alive if (b := ref()) is not None and "keys" in b.__dict__))
            alive.append(weakref.ref(block))
            yield block

    monkeypatch.setattr(file_module, "_blocks", watched)
    specs = [rule.logic.candidate_spec() for rule in RULES]
    columns = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.columns))
    required = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.required_columns))
    request = ReadRequest(WINDOW, columns, required, SharedSpec.of(s for s in specs if s is not None))
    taken = list(FileSource(path).read(request))
    assert len(alive) > 8 * candidates.HELD_BLOCKS  # many blocks, read once (time order: one pass)
    # Held blocks, and those in the reader's pipeline: 30 of 181 here, 180 of 181 without finish_waiting.
    assert most[0] <= 2 * candidates.HELD_BLOCKS, f"{most[0]} of {len(alive)} blocks held at once"
    assert sum(row["cIP"] == "198.51.100.7" for row in taken) == 25
    every_row = list(FileSource(path).read(ReadRequest(WINDOW, columns, required)))  # the plain read
    fired = {rule.id: rule.logic.evaluate(taken, WINDOW) for rule in RULES}
    assert fired == {rule.id: rule.logic.evaluate(every_row, WINDOW) for rule in RULES}
    assert sum(map(len, fired.values())) >= 1


CHANGES = {
    "no longer UTF-8": lambda size: b"\xff" * size,
    "blank lines": lambda size: b"\n" * size,
    "cut short": lambda size: b"\n" * (size // 4),
    "fewer lines in as many bytes": lambda size: b"x" * (size - 1) + b"\n",
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_file_changed_while_its_rows_are_taken_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str, change: str
) -> None:
    """The rows are typed after the first pass, while the rule takes them: no fallback is possible then, so
    bytes that are no longer what the first pass read (another encoding, fewer lines, fewer bytes) give
    the reader's InputError naming the input it was given (an IIS source's folder), never a traceback."""
    from detector.errors import InputError

    monkeypatch.setattr(file_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 200)
    write, shuffle = SHAPES[shape]
    source = write(tmp_path, shuffle)
    given = tmp_path if shape.startswith("an IIS") else next(tmp_path.iterdir())
    request = ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec())
    reading = source.read(request)
    next(reading)
    for path in tmp_path.rglob("*.*"):
        path.write_bytes(CHANGES[change](path.stat().st_size))
    with pytest.raises(InputError, match=r"changed while it was read( \(it is shorter now\))?; run again") as caught:
        list(reading)
    assert str(caught.value).startswith(str(given))


def test_a_line_both_reads_skip_is_skipped_though_the_file_grows_while_its_rows_are_taken(tmp_path: Path) -> None:
    """A candidate line polars reads and json refuses (nesting ~1000 deep in a column no rule reads) is the
    same line when taken: skipped as the plain read skips it, though a live log was appended to meanwhile."""
    lines = [json.dumps(row) for row in _scan_rows(False)]
    deep = len(lines) - 5
    lines[deep] = lines[deep][:-1] + ', "extra": ' + '{"x":' * 1000 + "1" + "}" * 1000 + "}"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    plain = FileSource(path)
    every_row = len(list(plain.read(ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns))))
    assert plain.read_stats()["skippedLines"] == 1
    source = FileSource(path)
    reading = source.read(ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec()))
    taken = [next(reading)]
    with path.open("a", encoding="utf-8") as log:
        log.write(lines[0] + "\n")  # the server writes on
    taken += reading
    assert len(taken) == every_row and source.read_stats()["skippedLines"] == 1


def test_rows_typed_row_by_row_are_kept_when_few_and_typed_again_when_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A block's runs typed row by row (the layout a server switches to for a few entries) keep the
    rows the rule takes when they are few (typed once), and are typed again when taken when they are
    more than HOLD_ROWS (a day whose every row is taken is never held typed)."""
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 16)
    typed = [0]
    plain_run = iis_module._plain_run

    def counted(*args: Any) -> Any:
        typed[0] += 1
        return plain_run(*args)

    monkeypatch.setattr(iis_module, "_plain_run", counted)
    source = _iis_headers(tmp_path, False)
    request = ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec())
    typings = []
    for hold_rows in (256, 16):  # more than, then fewer than a block's rows of the layout switched to
        monkeypatch.setattr(candidates, "HOLD_ROWS", hold_rows)
        typed[0] = 0
        rows = list(source.read(request))
        typings.append(typed[0])
        assert len(rows) == source.read_stats()["rowsRead"] == CLIENTS * PORTS
        assert len(LOGIC.evaluate(rows, WINDOW)) == CLIENTS
    runs = CLIENTS * PORTS // 50  # of the layout switched to (one cut by a block's end is two)
    assert runs <= typings[0] < 2 * runs
    assert typings[1] == 2 * typings[0]
