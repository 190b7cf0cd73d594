"""Sources on input shaped like real deployments: damaged IIS folders, non-web logs, unreadable and odd
paths, non-UTF-8 files, hostile values; and the JSON Lines fast and plain reads agreeing on any rows."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config import Settings
from detector.errors import InputError
from detector.kql import parse_datetime
from detector.models import Finding, Window
from detector.runner import run_incremental
from detector.sinks import Sink
from detector.sources import ReadRequest, Source
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource
from detector.state.file import FileStateStore
from tests.files import realworld_iis
from tests.helpers import DAY, FILES, RULE

LOGIC = RULE.logic


def _request(pushdown: bool, window: Window = DAY) -> ReadRequest:
    return ReadRequest(window, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec() if pushdown else None)


def _findings(source: Source, pushdown: bool) -> list[dict[str, Any]]:
    return LOGIC.evaluate(list(source.read(_request(pushdown))), DAY)


@pytest.fixture
def folder(tmp_path: Path) -> realworld_iis.Written:
    return realworld_iis.write_folder(tmp_path / "LogFiles")


@pytest.mark.parametrize("pushdown", [False, True])
def test_a_damaged_log_folder_is_read_with_every_good_entry(
    folder: realworld_iis.Written, pushdown: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = IisLogSource(folder.root, "web01")
    findings = _findings(source, pushdown)
    assert {(f["cIP"], f["portCount"]) for f in findings} == {("198.51.100.7", 40), ("198.51.100.8", 32)}
    stats = source.read_stats()
    assert stats["skippedByFile"] == {file: len(lines) for file, lines in folder.malformed.items()}
    assert stats["skippedLines"] == sum(len(lines) for lines in folder.malformed.values())
    assert stats["rowsRead"] == len(folder.entries) - 1  # all good entries but the one still being written
    messages = [r.getMessage() for r in caplog.records]
    for file, lines in folder.malformed.items():
        for line in lines:
            assert any(f"{file}:{line}:" in m for m in messages), (file, line)
    assert any("16 fields but #Fields declares 15" in m for m in messages)
    assert any("NUL bytes" in m for m in messages)
    assert any("truncated last line" in m for m in messages)
    assert all(len(m) < 400 for m in messages)  # never a dump of the line
    assert sum("lacks s-ip" in m for m in messages) == 1  # one warning for the one block without s-ip
    assert any("FTPSVC2" in m and "not web server logs" in m for m in messages)
    assert any("SMTPSVC1" in m for m in messages)


def test_fast_and_plain_reads_of_a_damaged_folder_agree_and_strict_stops_at_the_first_bad_line(
    folder: realworld_iis.Written,
) -> None:
    lenient = IisLogSource(folder.root, "web01")
    assert _findings(lenient, True) == _findings(lenient, False)
    errors = []
    for pushdown in (False, True):
        with pytest.raises(InputError) as caught:
            _findings(IisLogSource(folder.root, "web01", strict=True), pushdown)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    first_file = min(folder.malformed)
    assert errors[0].startswith(f"{first_file}:{folder.malformed[first_file][0]}:")
    assert "strict" in errors[0]


def test_an_ftp_log_next_to_web_logs_is_skipped_by_its_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    realworld_iis.ftp_file_outside_its_folder(tmp_path / "u_ex261126.log")
    source = IisLogSource(tmp_path / "u_ex261126.log", "web01")
    for pushdown in (False, True):
        assert list(source.read(_request(pushdown))) == []
        assert source.read_stats()["skippedLines"] == 0  # not malformed: not web requests
    assert any("FTP log entries skipped" in r.getMessage() for r in caplog.records)


def test_a_truncated_last_line_is_read_complete_on_a_later_run(folder: realworld_iis.Written, tmp_path: Path) -> None:
    """The late-data re-check sees the file change and re-evaluates the bin with the finished entry."""
    found: list[dict[str, Any]] = []

    class Collect(Sink):
        name = "collect"

        def deliver(self, findings: Sequence[Finding]) -> None:
            found.extend(f.to_json() for f in findings)

    for path in folder.root.rglob("*.log"):
        os.utime(path, (0, 0))  # written long before the first run
    config = Settings.from_env({"DETECTOR_SOURCE": "iis:unused", "DETECTOR_RECHECK_HORIZON": "1d"})
    clock_now = [datetime.now(UTC)]
    store = FileStateStore(tmp_path / "state")
    now = parse_datetime("2026-11-27T00:35:00Z")
    source = IisLogSource(folder.root, "web01")
    first = run_incremental([RULE], source, [Collect()], store, now, config, lambda: clock_now[0])
    assert first.ok
    assert {f["cIP"]: f["portCount"] for f in found}["198.51.100.8"] == 32
    assert first.to_json()["skippedLines"] == sum(len(v) for v in folder.malformed.values())
    assert first.to_json()["rowsRead"] == len(folder.entries) - 1

    assert folder.truncated is not None
    with folder.truncated.open("a", encoding="utf-8", newline="") as out:
        out.write(folder.truncated_rest)  # the writer finishes the line
    clock_now[0] += timedelta(hours=1)
    os.utime(folder.truncated, (clock_now[0].timestamp(), clock_now[0].timestamp()))
    found.clear()
    second = run_incremental([RULE], source, [Collect()], store, now + timedelta(hours=1), config, lambda: clock_now[0])
    assert second.ok
    assert any(r.kind == "recheck" for r in second.rules)
    assert {f["cIP"]: f["portCount"] for f in found}["198.51.100.8"] == 33  # the finished entry is in


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: os.mkfifo(p / "W3SVC1" / "u_ex261127.log"), "not a regular file"),
        (lambda p: (p / "W3SVC1" / "u_ex261127.log").symlink_to("/dev/zero"), "not a regular file"),
    ],
)
def test_anything_but_a_regular_file_in_a_log_folder_is_an_error_naming_it(tmp_path: Path, make: Any, message: str) -> None:
    (tmp_path / "W3SVC1").mkdir()
    shutil.copy(FILES / "iis" / "W3SVC1" / "u_ex261126.log", tmp_path / "W3SVC1")
    make(tmp_path)
    with pytest.raises(InputError, match=message) as caught:
        list(IisLogSource(tmp_path, "web01").read(_request(True)))
    assert "u_ex261127.log" in str(caught.value)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_file_source_refuses_devices_and_fifos(tmp_path: Path, target: str) -> None:
    path = Path(target)
    if target == "fifo":
        path = tmp_path / "rows.jsonl"
        os.mkfifo(path)
    for pushdown in (False, True):
        with pytest.raises(InputError, match="not a regular file"):
            list(FileSource(path).read(_request(pushdown)))


def test_an_unreadable_subfolder_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "W3SVC1").mkdir()
    (tmp_path / "W3SVC2").mkdir()
    shutil.copy(FILES / "iis" / "W3SVC1" / "u_ex261126.log", tmp_path / "W3SVC1")
    original = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self.name == "W3SVC2":  # root reads everything, so the permission failure is the OS's answer, faked
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(InputError, match="W3SVC2: folder cannot be read"):
        list(IisLogSource(tmp_path, "web01").read(_request(True)))


@pytest.mark.parametrize(
    ("content", "looks"),
    [
        ("\ufeff{}\n".encode("utf-16-le"), "UTF-16 (little-endian"),
        ('{"a": 1}\n'.encode("utf-16-be"), "UTF-16 without a BOM"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
        (b'{"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "caf\xe9"}\n', None),
    ],
)
@pytest.mark.parametrize("pushdown", [False, True])
def test_non_utf8_input_is_one_error_saying_what_it_looks_like(
    tmp_path: Path, content: bytes, looks: str | None, pushdown: bool
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        list(FileSource(path).read(_request(pushdown)))
    text = str(caught.value)
    assert text.startswith(str(path))
    if looks:
        assert looks in text
    else:
        assert "not UTF-8 at byte" in text or "not JSON Lines" in text


def test_an_iis_log_in_utf16_or_gzip_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "u_ex261126.log"
    path.write_bytes("#Fields: date time\r\n".encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16"):
        list(IisLogSource(path, "web01").read(_request(True)))


GOOD = {"TimeGenerated": "2026-11-26T10:00:00Z", "cIP": "203.0.113.1", "Computer": "web01", "sIP": "10.0.0.4", "sPort": 80}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"cIP": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (json.dumps({**GOOD, "TimeGenerated": "0001-01-01T00:30:00+01:00"}), "out of range"),
        (json.dumps({**GOOD, "TimeGenerated": "9999-12-31T23:30:00-01:00"}), "out of range"),
    ],
)
@pytest.mark.parametrize("pushdown", [False, True])
def test_hostile_lines_are_skipped_with_one_clear_reason_never_a_traceback(
    tmp_path: Path, line: str, reason: str, pushdown: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    source = FileSource(path)
    rows = list(source.read(_request(pushdown)))
    assert len(rows) == (0 if pushdown else 1)
    assert source.read_stats()["skippedByFile"] == {str(path): 1}
    assert any(f"{path}:2:" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match=reason):
        list(FileSource(path, strict=True).read(_request(pushdown)))


@pytest.mark.parametrize("pushdown", [False, True])
def test_a_lone_surrogate_becomes_the_replacement_character(tmp_path: Path, pushdown: bool) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{**GOOD, "sPort": port, "csUserAgent": "evil\\ud800agent"} for port in range(40)]
    path.write_text("".join(json.dumps(r).replace("\\\\ud800", "\\ud800") + "\n" for r in rows), encoding="utf-8")
    read = list(FileSource(path).read(_request(pushdown)))
    assert len(read) == 40
    assert {r["csUserAgent"] for r in read} == {"evil\ufffdagent"}
    (finding,) = LOGIC.evaluate(read, DAY)
    json.dumps(finding, default=str).encode("utf-8")  # every sink can carry it


# -- the JSON Lines fast and plain reads agree on any rows ------------------------------------------------

# Key values include the text Python gives JSON numbers and booleans (str(1.0), str(100.0), "true"), so a
# row whose key is a number can join (or wrongly miss) a scanning group.
KEYS = ["203.0.113.1", "1.0", "100.0", "true", "10.0.0.4", "web01"]
VALUES = st.one_of(
    st.sampled_from(KEYS),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([1.0, 2.5, 1e2, True, None, "", "-", "0042", " 7"]),
    st.just({"nested": "object"}),
    st.just(["a", "list"]),
)
PORTS = st.one_of(st.integers(min_value=0, max_value=40), st.sampled_from([None, "", "-", "12", "x", 3.0, 2.5, True]))
TIMES = st.sampled_from(
    ["2026-11-26T10:00:00Z", "2026-11-26T10:05:30.5Z", "2026-11-26T10:09:59Z", "2026-11-26 10:01:00", "2026-11-26T10:02:00+01:00"]
)


def _number_like(text: str) -> list[Any]:
    """JSON values that Python's str() turns into this text (1.0 for "1.0", True for "true")."""
    return [value for value in (1.0, 100.0, 1e2, True) if str(value) == text or (value is True and text == "true")]


CANONICAL_TIMES = st.sampled_from(["2026-11-26T10:00:00Z", "2026-11-26T10:05:30.5Z", "2026-11-26T10:09:59Z"])


@st.composite
def json_line(draw: st.DrawFn, scanner: dict[str, str]) -> str:
    """A row near the scanner's group. Most rows are clean but for one twist (a key written as the number
    whose str() is the scanner's key, a repeated key, a missing column, an object where a user agent
    belongs), so their blocks take the columnar path; the rest may be anything."""
    clean = draw(st.integers(0, 3)) > 0
    members: list[tuple[str, Any]] = [("TimeGenerated", draw(CANONICAL_TIMES if clean else TIMES))]
    for key in ("cIP", "Computer", "sIP"):
        choice = draw(st.integers(0, 9))
        same = _number_like(scanner[key])
        if choice < 6 or (clean and not same):
            value: Any = scanner[key]
        elif choice < 8 and same:
            value = draw(st.sampled_from(same))
        else:
            value = draw(st.one_of(st.sampled_from(KEYS), VALUES))
        members.append((key, value))
    members.append(("sPort", draw(st.integers(0, 40) if clean else PORTS)))
    members.append(("csUserAgent", draw(st.sampled_from(["curl", "Mozilla/5.0", "\\ud800", {"not": "a string"}]))))
    if draw(st.integers(0, 9)) == 0:
        members.append((draw(st.sampled_from(["cIP", "sPort", "TimeGenerated"])), draw(VALUES)))  # a repeated key
    if not clean and draw(st.integers(0, 4)) == 0:
        members.pop(draw(st.integers(0, len(members) - 1)))  # a missing column
    draw(st.randoms()).shuffle(members)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = "{" + separators[0].join(json.dumps(k) + separators[1] + json.dumps(v) for k, v in members) + "}"
    return text.replace("\\\\ud800", "\\ud800")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.data(),
    st.booleans(),
    st.sampled_from([1024, 1 << 20]),
    st.fixed_dictionaries({key: st.sampled_from(KEYS) for key in ("cIP", "Computer", "sIP")}),
)
def test_json_lines_fast_and_plain_reads_agree_on_any_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key_reader: str,
    data: st.DataObject,
    strict: bool,
    block: int,
    scanner: dict[str, str],
) -> None:
    lines = data.draw(st.lists(json_line(scanner), min_size=1, max_size=120))
    import detector.sources.file as file_module

    monkeypatch.setattr(file_module, "BLOCK_BYTES", block)
    # Dense groups, so some reach the threshold and the fast path has candidates to take.
    scan = [json.dumps({**GOOD, **scanner, "sPort": port, "TimeGenerated": "2026-11-26T10:03:00Z"}) for port in range(30)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(scan + lines) + "\n", encoding="utf-8")
    outcomes = []
    for pushdown in (False, True):
        source = FileSource(path, strict=strict)
        try:
            rows = list(source.read(_request(pushdown)))
            outcomes.append(("ok", json.dumps(LOGIC.evaluate(rows, DAY), default=str, sort_keys=True)))
        except InputError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]


# -- a saved Log Analytics response body is read as a stream -----------------------------------------------


def _response(rows: list[dict[str, Any]], *, columns_first: bool = True, extra_first: bool = False) -> dict[str, Any]:
    names = ["TimeGenerated", "cIP", "Computer", "sIP", "sPort", "csUserAgent"]
    table: dict[str, Any] = {"name": "PrimaryResult"}
    columns = [{"name": n, "type": "int" if n == "sPort" else "string"} for n in names]
    values = [[row.get(n) for n in names] for row in rows]
    table.update({"columns": columns, "rows": values} if columns_first else {"rows": values, "columns": columns})
    tables = [table]
    if extra_first:
        tables.insert(0, {"name": "Statistics", "columns": [{"name": "x", "type": "long"}], "rows": [[1]]})
    return {"tables": tables}


def _scan_rows(count: int) -> list[dict[str, Any]]:
    return [
        {**GOOD, "sPort": port % 997, "csUserAgent": "Mozilla/5.0 (é ✓ 𝕏)", "cIP": f"198.51.100.{port % 7}"}
        for port in range(count)
    ]


@pytest.mark.parametrize("layout", ["compact", "pretty", "rows before columns", "statistics first"])
def test_a_saved_response_streams_to_the_same_rows_as_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    import detector.sources.response as response_module

    monkeypatch.setattr(response_module, "STREAM_CHUNK", 61)  # numbers and UTF-8 sequences cut across chunks
    rows = _scan_rows(500)
    document = _response(rows, columns_first=layout != "rows before columns", extra_first=layout == "statistics first")
    body = tmp_path / "response.json"
    body.write_text(json.dumps(document, indent=2 if layout == "pretty" else None, ensure_ascii=False), encoding="utf-8")
    lines = tmp_path / "rows.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for pushdown in (False, True):
        assert list(FileSource(body).read(_request(pushdown))) == list(FileSource(lines).read(_request(False)))


def test_a_saved_response_with_an_error_after_its_rows_fails_the_read(tmp_path: Path) -> None:
    body = tmp_path / "response.json"
    body.write_text(json.dumps({**_response(_scan_rows(50)), "error": {"code": "PartialError"}}), encoding="utf-8")
    with pytest.raises(InputError, match="carries an error"):
        list(FileSource(body).read(_request(False)))


def test_a_saved_response_is_never_loaded_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory follows a chunk and one row, not the body: 4x the rows, about the same peak."""
    import tracemalloc

    import detector.sources.response as response_module

    monkeypatch.setattr(response_module, "STREAM_CHUNK", 1 << 16)
    peaks = []
    for count in (20_000, 80_000):
        body = tmp_path / f"response{count}.json"
        body.write_text(json.dumps(_response(_scan_rows(count))), encoding="utf-8")
        tracemalloc.start()
        read = sum(1 for _ in FileSource(body).read(_request(False)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert read == count
    assert peaks[1] < 1.5 * peaks[0], peaks
