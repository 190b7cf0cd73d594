"""The benchmark generator writes one day in six shapes that hold the same rows and give the same findings.

No timing here: the benchmark itself (benchmarks/bench_core.py) measures; this checks that what it
measures is comparable, i.e. that ordered and shuffled JSON Lines, the response body, the az CLI array
and both IIS folders are the same day, and that DuckDB's anchor and the detector agree on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.duckdb_anchor import run as run_anchor
from benchmarks.generate import DAY, END, IIS_FIELDS, IIS_FILE, RESULT_COLUMNS, SITES, START, Day, write_day
from detector.logic.high_port_count import OUTPUT_COLUMNS
from detector.models import Window
from detector.rules import load_rules
from detector.runner import evaluate_window
from detector.sources import Source
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource

ROWS = 6_000
WINDOW = Window(DAY, DAY + timedelta(days=1))
COMPUTER = "bench-iis"


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    return write_day(ROWS, tmp_path_factory.mktemp("bench-data"))


def _findings(source: Source) -> list[list[Any]]:
    rule = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0]
    return [[f.to_json()[c] for c in OUTPUT_COLUMNS] for f in evaluate_window(rule, source, WINDOW).findings]


def _entries(folder: Path) -> dict[str, list[str]]:
    """Each site's entry lines (directives left out), by site folder name."""
    return {
        path.parent.name: [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        for path in sorted(folder.glob(f"*/{IIS_FILE}"))
    }


def test_json_shapes_hold_the_same_rows(day: Day) -> None:
    ordered = day.ordered.read_bytes().splitlines()
    shuffled = day.shuffled.read_bytes().splitlines()
    assert len(ordered) == ROWS
    assert sorted(ordered) == sorted(shuffled)
    assert ordered != shuffled  # really shuffled...
    times = [orjson.loads(line)["TimeGenerated"] for line in ordered]
    assert times == sorted(times)  # ...and really in time order
    shuffled_times = [orjson.loads(line)["TimeGenerated"] for line in shuffled]
    assert sum(a > b for a, b in itertools.pairwise(shuffled_times)) > ROWS // 4

    body = json.loads(day.response.read_bytes())
    assert list(body) == ["tables"]
    (table,) = body["tables"]
    assert table["name"] == "PrimaryResult"
    assert [(c["name"], c["type"]) for c in table["columns"]] == RESULT_COLUMNS
    types = dict(RESULT_COLUMNS)
    declared = (types["TimeGenerated"], types["sPort"], types["TimeTaken"], types["scStatus"])
    assert declared == ("datetime", "int", "long", "string")
    names = [name for name, _ in RESULT_COLUMNS]
    assert table["rows"] == [[orjson.loads(line)[n] for n in names] for line in shuffled]  # the shuffled rows, in that order
    assert day.response.read_bytes().count(b"\n") == 0  # one line, as the API sends it

    as_az_prints = [{"TableName": "PrimaryResult", **orjson.loads(line)} for line in shuffled]
    az_output = json.dumps(as_az_prints, ensure_ascii=False, indent=2, sort_keys=True) + "\n"  # knack's format_json
    assert day.array.read_bytes() == az_output.encode()


def test_iis_folders_hold_the_same_entries_as_the_json_rows(day: Day) -> None:
    single, many = _entries(day.iis_single), _entries(day.iis_many)
    assert sorted(single) == SITES
    assert single == many
    from_json = sorted(
        f"{r['TimeGenerated'][:10]} {r['TimeGenerated'][11:19]} {r['sSiteName']} {r['sIP']} {r['csMethod']} {r['csUriStem']} "
        f"{r['csUriQuery']} {r['sPort']} {r['csUserName']} {r['cIP']} {r['csUserAgent']} {r['csReferer']} {r['scStatus']} "
        f"{r['scSubStatus']} {r['scWin32Status']} {r['TimeTaken']}"
        for r in map(orjson.loads, day.ordered.read_bytes().splitlines())
    )
    assert sorted(line for lines in single.values() for line in lines) == from_json
    blocks = 0
    for path in sorted(day.iis_many.glob(f"*/{IIS_FILE}")):
        text = path.read_bytes()
        assert b"\r\n" in text
        assert text.count(b"\r\n") == text.count(b"\n")  # CRLF throughout, as IIS writes
        lines = text.decode().splitlines()
        assert lines[0].startswith("#Software: ")
        run = 0
        for line in lines:
            if line.startswith("#Fields: "):
                assert line == f"#Fields: {IIS_FIELDS}"
                blocks += 1
                run = 0
            elif not line.startswith("#"):
                run += 1
                assert 1 <= run <= day.manifest["max_block"]
    assert blocks == day.manifest["iis_many_blocks"] > ROWS // day.manifest["max_block"]
    for path in sorted(day.iis_single.glob(f"*/{IIS_FILE}")):
        assert path.read_text(encoding="utf-8").count("#Fields: ") == 1


def test_every_shape_gives_the_anchors_findings(day: Day) -> None:
    want = [[row[c] for c in OUTPUT_COLUMNS] for row in run_anchor(day.shuffled, START, END, None)]
    assert len(want) >= 10  # the planted scanners fire
    assert [[row[c] for c in OUTPUT_COLUMNS] for row in run_anchor(day.ordered, START, END, None)] == want
    for path in (day.ordered, day.shuffled, day.response, day.array):
        assert _findings(FileSource(path)) == want, path.name
    want_iis = [[row[c] for c in OUTPUT_COLUMNS] for row in run_anchor(day.shuffled, START, END, COMPUTER)]
    for folder in (day.iis_single, day.iis_many):
        assert _findings(IisLogSource(folder, COMPUTER)) == want_iis, folder.name


def _digest(day: Day) -> dict[str, str]:
    return {
        str(path.relative_to(day.folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(day.folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes_and_a_partial_folder_is_written_again(day: Day, tmp_path: Path) -> None:
    again = write_day(ROWS, tmp_path)
    assert _digest(again) == _digest(day)
    (again.folder / "manifest.json").unlink()  # as after an interrupted run
    again.shuffled.write_bytes(b"")
    rewritten = write_day(ROWS, tmp_path)
    assert _digest(rewritten) == _digest(day)
    other_seed = write_day(ROWS, tmp_path / "other", seed=7)
    assert other_seed.ordered.read_bytes() != day.ordered.read_bytes()


def test_a_day_written_before_array_json_is_completed_and_its_other_shapes_kept(day: Day, tmp_path: Path) -> None:
    older = write_day(ROWS, tmp_path)
    manifest = older.manifest
    del manifest["array_version"], manifest["bytes"]["array.json"]  # the manifest of a day from before array.json
    (older.folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    older.array.unlink()
    (older.folder / "array.json.partial").write_bytes(b"[\n  {")  # and an interrupted completion
    kept = older.ordered.stat().st_mtime_ns, older.shuffled.stat().st_mtime_ns, older.response.stat().st_mtime_ns
    completed = write_day(ROWS, tmp_path)
    assert _digest(completed) == _digest(day)
    assert (completed.ordered.stat().st_mtime_ns, completed.shuffled.stat().st_mtime_ns,
            completed.response.stat().st_mtime_ns) == kept  # fmt: skip


def test_too_few_rows_for_the_planted_scanners_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--rows must be at least"):
        write_day(1_000, tmp_path)


def test_block_steps_times_every_step_of_the_columnar_read(
    day: Day, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/block_steps.py reads every block of the ordered day whole with the detector's own code
    and times each step in place (what it prints is a figure, not checked; that the steps ran is)."""
    import detector.sources.file as file_module
    from benchmarks import block_steps

    # block_steps wraps the steps in the file module (and --key-reader polars replaces decoded_keys): undone after.
    for name in (*block_steps.STEPS, "decoded_keys"):
        monkeypatch.setattr(file_module, name, getattr(file_module, name))
    argv = ["block_steps.py", str(day.ordered), "--blocks", "5", "--block-bytes", str(256 * 1024)]
    for reader, steps in (
        ("msgspec", ("decoded_keys", "polars_lines", "_typed", "keys_frame")),
        ("polars", ("read_ndjson", "polars_lines", "_names_once", "_typed", "keys_frame")),
    ):
        monkeypatch.setattr("sys.argv", [*argv, "--key-reader", reader])
        assert block_steps.main() == 0
        out = capsys.readouterr().out
        first = out.splitlines()[0]
        assert first.startswith("5 blocks,") and "(0 with odd lines)" in first, out
        for step in steps:
            assert step in out, (reader, out)
        assert ("read_ndjson" in out) == (reader == "polars"), out


def test_the_warm_up_reads_every_input_of_the_shapes_run(day: Day) -> None:
    from benchmarks.bench_core import shape_files

    every = shape_files(day, {"ordered", "shuffled", "response", "array", "iis-single", "iis-many"})
    logs = sorted(day.iis_single.rglob("*.log")) + sorted(day.iis_many.rglob("*.log"))
    assert len(logs) > 2 and all(path.is_file() for path in every)
    assert set(every) == {day.ordered, day.shuffled, day.response, day.array, *logs} and len(every) == len(set(every))
    assert shape_files(day, {"ordered"}) == [day.ordered]
    # A shape compared with DuckDB on the shuffled rows warms that file too (the anchor reads it).
    assert shape_files(day, {"iis-many"}) == [*sorted(day.iis_many.rglob("*.log")), day.shuffled]
    assert shape_files(day, {"response"}) == [day.response, day.shuffled]


def test_the_scan_day_is_every_row_a_candidate_in_time_order_and_shuffled(tmp_path: Path) -> None:
    from benchmarks.scan_day import BINS, SCAN_PORTS, write_scan_day

    rows = 3 * SCAN_PORTS + 17  # a last scanner cut short
    ordered, shuffled = write_scan_day(rows, tmp_path)
    lines = ordered.read_bytes().splitlines()
    assert len(lines) == rows
    assert sorted(lines) == sorted(shuffled.read_bytes().splitlines()) and lines != shuffled.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    times = [r["TimeGenerated"] for r in records]
    assert times == sorted(times)
    groups: dict[tuple[str, str, str], set[int]] = {}
    for r in records:
        minute = int(r["TimeGenerated"][11:13]) * 60 + int(r["TimeGenerated"][14:16])
        groups.setdefault((r["cIP"], r["Computer"], f"{minute // 10}"), set()).add(r["sPort"])
    sizes = sorted(len(ports) for ports in groups.values())
    assert sizes == [17, SCAN_PORTS, SCAN_PORTS, SCAN_PORTS] and len(groups) <= BINS  # one bin per scanner
    assert set(records[0]) == set(json.loads(_first_line_of_generated_day()))


def _first_line_of_generated_day() -> bytes:
    from benchmarks.generate import _json_line, generate_rows

    row = next(generate_rows(5000))
    iso = [f"2026-11-26T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)]
    return _json_line(row, iso)
