"""The fast (candidate pushdown) read of file: and iis: sources gives exactly the plain read's results.

The plain read (ReadRequest without candidates) is the straightforward reference: every row, typed by
coerce_row / W3cLayout.entry, evaluated by the rule. The fast read returns only rows of groups that can
reach the threshold; the rule's results must be identical, on the fixtures and on seeded random days
that include out-of-order rows, odd values that force the row-by-row path, #Fields changes and the
128 cap.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.errors import InputError
from detector.kql import CappedSet
from detector.logic.high_port_count import HighPortCountByClientIP
from detector.models import Window
from detector.rules import load_rules
from detector.sources import ReadRequest, Source
from detector.sources import jsonl_candidates as jsonl_module
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource

FILES = Path(__file__).resolve().parent / "files"
DAY = datetime(2026, 11, 26, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _logic() -> HighPortCountByClientIP:
    logic = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0].logic
    assert isinstance(logic, HighPortCountByClientIP)
    return logic


def _results(source: Source, window: Window, pushdown: bool) -> tuple[list[dict[str, Any]], int]:
    logic = _logic()
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec() if pushdown else None)
    rows = list(source.read(request))
    return logic.evaluate(rows, window), len(rows)


def _assert_same(source: Source, window: Window = WINDOW) -> tuple[int, int]:
    plain, plain_rows = _results(source, window, pushdown=False)
    fast, fast_rows = _results(source, window, pushdown=True)
    assert fast == plain
    return plain_rows, fast_rows


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few KB, so that small test files span many blocks and bins are finished on the way."""
    monkeypatch.setattr(jsonl_module, "BLOCK_BYTES", 4096)
    original = jsonl_module.read_blocks

    def read_small(handle: Any, start: int, block_bytes: int = 4096) -> Any:
        return original(handle, start, block_bytes)

    monkeypatch.setattr(jsonl_module, "read_blocks", read_small)
    import detector.sources.iis_candidates as iis_module

    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 4096)


@pytest.mark.parametrize("name", ["w3ciislog.jsonl", "w3ciislog_array.json", "la_response.json"])
def test_fixture_files_give_the_same_results(name: str) -> None:
    plain_rows, fast_rows = _assert_same(FileSource(FILES / name))
    if name.endswith(".jsonl"):
        assert fast_rows < plain_rows  # the pushdown did run: rows of groups that cannot fire were skipped


def test_iis_fixture_gives_the_same_results() -> None:
    plain_rows, fast_rows = _assert_same(IisLogSource(FILES / "iis", "web01.contoso.com"))
    assert fast_rows < plain_rows


def test_window_edges_inside_a_bin_give_the_same_results() -> None:
    source = FileSource(FILES / "w3ciislog.jsonl")
    _assert_same(source, Window(DAY + timedelta(hours=3, minutes=25), DAY + timedelta(hours=14, minutes=30, seconds=20)))


def _random_rows(rng: random.Random, count: int) -> list[dict[str, Any]]:
    clients = [f"203.0.113.{i}" for i in range(1, 12)] + ["2001:db8::bad:1"]
    rows = []
    for _ in range(count):
        moment = DAY + timedelta(seconds=rng.randrange(-600, 86400 + 600), microseconds=rng.choice([0, 0, 0, 123456]))
        rows.append(
            {
                "TimeGenerated": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"),
                "Computer": rng.choice(["web01", "web02"]),
                "sIP": rng.choice(["10.0.0.4", "10.0.0.5"]),
                "sPort": rng.choice([None, *range(1, 300)]) if rng.random() < 0.97 else None,
                "cIP": rng.choice(clients),
                "csMethod": rng.choice(["GET", "POST"]),
                "csUriQuery": rng.choice(["-", "q=a+b%20c", "bad=%E2%82", "x=%zz"]),
                "csUserName": rng.choice(["-", "", "CONTOSO\\alice"]),
                "csUserAgent": rng.choice(["curl/8", "Mozilla/5.0+(X11)"]),
                "sSiteName": "W3SVC1",
                "scStatus": rng.choice(["200", "401", "403"]),
                "scSubStatus": rng.choice(["0", "1", "4"]),
                "scWin32Status": rng.choice(["0", "5", "2148074252", "-"]),
            }
        )
    return rows


def _scans(rng: random.Random) -> list[dict[str, Any]]:
    """Dense groups so findings exist: up to 200 ports (over the 128 cap) from one client in one bin."""
    rows = []
    for _ in range(6):
        start = DAY + timedelta(minutes=10 * rng.randrange(144))
        client, ports = f"198.51.100.{rng.randrange(1, 50)}", rng.sample(range(1, 65536), rng.choice([29, 30, 31, 129, 200]))
        for port in ports:
            moment = start + timedelta(seconds=rng.randrange(600))
            rows.append(
                {
                    "TimeGenerated": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Computer": "web01",
                    "sIP": "10.0.0.4",
                    "sPort": port,
                    "cIP": client,
                    "csUriQuery": rng.choice(["-", f"p={port}"]),
                    "scWin32Status": str(port),
                }
            )
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_random_json_lines_give_the_same_results(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    columnar = []
    original = jsonl_module._columnar_keys

    def spy(*args: Any) -> Any:
        keys = original(*args)
        columnar.append(keys is not None)
        return keys

    monkeypatch.setattr(jsonl_module, "_columnar_keys", spy)
    rng = _rng(seed)
    rows = _random_rows(rng, 3000) + _scans(rng)
    if seed % 2 == 0:
        rows.sort(key=lambda r: r["TimeGenerated"])  # time-ordered: one pass, bins finished on the way
    else:
        rng.shuffle(rows)  # unordered: the finder sees a finished bin again and reads twice
    lines = [json.dumps(r, separators=(",", ":") if seed % 3 else (", ", ": ")) for r in rows]
    if seed == 2:
        lines[100] = lines[100].replace('"cIP":"', '"cIP":null, "x":"')  # a null key: that block is read row by row
        lines.insert(200, "")  # a blank line
        lines[300] = lines[300].replace('"sPort":', '"sPort":"0042", "y":')  # a port as a string
    if seed == 4:
        lines[50] = lines[50].replace('"TimeGenerated":"2026-11-26T', '"TimeGenerated":"2026-11-26 ')  # not canonical
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain_rows, fast_rows = _assert_same(FileSource(path))
    assert fast_rows < plain_rows
    assert any(columnar)  # most blocks took the columnar path...
    assert not all(columnar) or seed not in (2, 4)  # ...and the odd ones were read row by row


def test_a_bad_key_value_is_reported_like_the_plain_path(tmp_path: Path) -> None:
    rows = _random_rows(_rng(9), 500)
    rows[321]["sPort"] = "eighty"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    logic = _logic()
    errors = []
    for spec in (None, logic.candidate_spec()):
        with pytest.raises(InputError) as caught:
            list(FileSource(path).read(ReadRequest(WINDOW, logic.columns, logic.required_columns, spec)))
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert ":322:" in errors[0]


IIS_FIELDS_A = (
    "date time s-ip cs-method cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status sc-substatus sc-win32-status"
)
IIS_FIELDS_B = "date time c-ip s-ip s-port cs-method cs-uri-query sc-status sc-win32-status time-taken"


def _iis_line(row: dict[str, Any], fields: str) -> str:
    values = {
        "date": row["TimeGenerated"][:10],
        "time": row["TimeGenerated"][11:19],
        "s-ip": row["sIP"],
        "cs-method": row.get("csMethod") or "GET",
        "cs-uri-query": row.get("csUriQuery") or "-",
        "s-port": "-" if row["sPort"] is None else str(row["sPort"]),
        "cs-username": row.get("csUserName") or "-",
        "c-ip": row["cIP"],
        "cs(User-Agent)": row.get("csUserAgent") or "-",
        "sc-status": row.get("scStatus") or "200",
        "sc-substatus": row.get("scSubStatus") or "0",
        "sc-win32-status": row.get("scWin32Status") or "0",
        "time-taken": "15",
    }
    return " ".join(values[f] for f in fields.split())


@pytest.mark.parametrize("seed", range(4))
def test_random_iis_logs_give_the_same_results(tmp_path: Path, seed: int) -> None:
    rng = _rng(100 + seed)
    rows = sorted(_random_rows(rng, 3000) + _scans(rng), key=lambda r: r["TimeGenerated"])
    out = ["#Software: Microsoft Internet Information Services 10.0", "#Version: 1.0", "#Date: 2026-11-25 23:50:00"]
    fields = IIS_FIELDS_A
    out.append(f"#Fields: {fields}")
    for index, row in enumerate(rows):
        if index and index % 700 == 0:  # logging configuration changed: a new #Fields mid-file
            fields = IIS_FIELDS_B if fields == IIS_FIELDS_A else IIS_FIELDS_A
            out.append(f"#Fields: {fields}")
        out.append(_iis_line(row, fields))
    if seed == 1:
        out[900] = out[900] + " extra"  # wrong field count: the plain path's error must come out
    if seed == 2:
        out[1200] = out[1200].replace(" ", "  ", 1)  # an empty field
    folder = tmp_path / "W3SVC1"
    folder.mkdir()
    half = len(out) // 2
    (folder / "u_ex261126.log").write_text("\r\n".join(out[:half]) + "\r\n", encoding="utf-8")
    (folder / "u_ex261127.log").write_text("\n".join([*out[:4], *out[half:]]) + "\n", encoding="utf-8")
    source = IisLogSource(tmp_path, "web01")
    if seed in (1, 2):
        logic = _logic()
        errors = []
        for spec in (None, logic.candidate_spec()):
            with pytest.raises(InputError) as caught:
                list(source.read(ReadRequest(WINDOW, logic.columns, logic.required_columns, spec)))
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
        return
    plain_rows, fast_rows = _assert_same(source)
    assert fast_rows < plain_rows


@pytest.mark.parametrize("seed", range(20))
def test_capped_set_keeps_the_smallest_distinct_values(seed: int) -> None:
    rng = _rng(seed)
    values = [rng.randrange(1000) if rng.random() < 0.9 else None for _ in range(rng.randrange(0, 2000))]
    capped: CappedSet[int] = CappedSet(128)
    for value in values:
        capped.add(value)
    reference = sorted({v for v in values if v is not None})[:128]
    assert capped.values() == reference
    assert len(capped) == len(reference)
