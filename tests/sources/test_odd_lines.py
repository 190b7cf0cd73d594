"""JSON Lines blocks with a few odd lines: the good lines stay columnar, the odd ones go to the plain code.

Real exports hold lines the columnar parse cannot read exactly (cut or invalid JSON, a line that is not an
object, blank lines, a key written twice or with a `\\u` escape, a lone surrogate, a null key column, a
time or port the plain code refuses). One such line used to send its whole block (~9,000 lines) to the
plain code; now only the line goes. Whatever the mix, the pushed-down read must give the plain read's
results, rows read and skipped lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import detector.sources.file as file_module
from detector.sources import ReadRequest
from detector.sources.file import FileSource
from tests.sources.test_candidates import HIGH_PORT, WINDOW, _scan_line

LOGIC = HIGH_PORT.logic

# One odd line of each kind the columnar parse cannot read whole (each is a row of the scanning group,
# at port 500, where it would be the 30th port). The plain code reads some (a null detail, a number
# where a string key belongs it refuses) and skips the others.
GOOD_ROW = json.dumps(_scan_line(30, 500))
ODD_LINES = {
    "cut JSON": GOOD_ROW[:-9],
    "trailing text": GOOD_ROW + " x",
    "an array": "[" + GOOD_ROW + "]",
    "null": "null",
    "a string": '"text"',
    "a number": "42",
    "blank": "",
    "spaces": "   \t",
    "NaN port": GOOD_ROW.replace('"sPort": 500', '"sPort": NaN'),
    "Infinity port": GOOD_ROW.replace('"sPort": 500', '"sPort": Infinity'),
    "a key twice": GOOD_ROW.replace('"sPort": 500', '"sPort": 7, "sPort": 500'),
    "a key twice, the last bad": GOOD_ROW.replace('"sPort": 500', '"sPort": 500, "sPort": "x"'),
    "an escaped key": GOOD_ROW.replace('"sPort"', '"s\\u0050ort"'),
    "an escaped key, not a column": GOOD_ROW.replace('"Computer"', '"Compute\\u0072x"'),
    "a lone surrogate": GOOD_ROW.replace("}", ', "csUserAgent": "a\\ud800b"}'),
    "a lone surrogate in a key column": GOOD_ROW.replace('"web01"', '"web\\udc00"'),
    "cIP null": GOOD_ROW.replace('"198.51.100.9"', "null"),
    "cIP missing": GOOD_ROW.replace('"cIP": "198.51.100.9", ', ""),
    "Computer a number": GOOD_ROW.replace('"web01"', "1.0"),
    "sIP true": GOOD_ROW.replace('"10.0.0.4"', "true"),
    "time null": GOOD_ROW.replace('"2026-11-26T05:00:30Z"', "null"),
    "time missing": GOOD_ROW.replace('"TimeGenerated": "2026-11-26T05:00:30Z", ', ""),
    "time a number": GOOD_ROW.replace('"2026-11-26T05:00:30Z"', "20261126"),
    "time yesterday": GOOD_ROW.replace("2026-11-26T05:00:30Z", "yesterday"),
    "time with an offset": GOOD_ROW.replace("2026-11-26T05:00:30Z", "2026-11-26T06:00:30+01:00"),
    "time out of range": GOOD_ROW.replace("2026-11-26T05:00:30Z", "0001-01-01T00:30:00+01:00"),
    "port http": GOOD_ROW.replace('"sPort": 500', '"sPort": "http"'),
    "port 1.5": GOOD_ROW.replace('"sPort": 500', '"sPort": 1.5'),
    "port 2^63": GOOD_ROW.replace('"sPort": 500', f'"sPort": {2**63}'),
    "port of 5,000 digits": GOOD_ROW.replace('"sPort": 500', '"sPort": ' + "9" * 5000),
    "port +500": GOOD_ROW.replace('"sPort": 500', '"sPort": "+500"'),
    "nested 40 deep": GOOD_ROW.replace("}", ', "csUserAgent": ' + "[" * 40 + "]" * 40 + "}"),
    "nested 3,000 deep": GOOD_ROW.replace("}", ', "csUserAgent": ' + "[" * 3000 + "]" * 3000 + "}"),
    "a NUL escape": GOOD_ROW.replace("}", ', "csUserAgent": "a\\u0000b"}'),
    "a raw control character": GOOD_ROW.replace("web01", "web\x0101"),
    # Invalid JSON that starts with "{" and ends with "}": polars' parser refuses the block, and the cheap
    # guess of which lines it refuses does not see these (json_path_match finds them).
    "a trailing comma": GOOD_ROW[:-1] + ", }",
    "a missing comma": GOOD_ROW.replace(', "sIP"', ' "sIP"'),
    "a bad escape": GOOD_ROW.replace("web01", "web\\q01"),
    "a leading zero": GOOD_ROW.replace('"sPort": 500', '"sPort": 0500'),
    "two objects": GOOD_ROW + GOOD_ROW,
    "port null": GOOD_ROW.replace('"sPort": 500', '"sPort": null'),
    "port missing": GOOD_ROW.replace(', "sPort": 500', ""),
    "port missing, a nested null one": GOOD_ROW.replace('"sPort": 500', '"x": {"sPort": null}'),
    "port missing, in a list": GOOD_ROW.replace('"sPort": 500', '"x": [{"sPort": null}]'),
    "port missing, a key ending in it": GOOD_ROW.replace('"sPort": 500', '"a\\"sPort": null'),
    "port null beside a brace": GOOD_ROW.replace('"sPort": 500', '"sPort": null, "csUserAgent": "x {y}"'),
    "port null beside an escaped quote": GOOD_ROW.replace('"sPort": 500', '"sPort": null, "csUserAgent": "x \\"y\\" [z]"'),
    "port null in a nested key's text": GOOD_ROW.replace('"sPort": 500', '"x": "\\"sPort\\": null"'),
    "port null, written twice": GOOD_ROW.replace('"sPort": 500', '"sPort": null, "sPort": null'),
    "port null and a key twice": GOOD_ROW.replace('"sPort": 500', '"sPort": null, "cIP": "203.0.113.7"'),
    "a value ending in a column's name": GOOD_ROW.replace("}", ', "csUserAgent": "probe cIP"}'),
    "a value that is a column's name": GOOD_ROW.replace("}", ', "csUserAgent": "cIP"}'),
    "Computer a number, spaced": GOOD_ROW.replace('"Computer": "web01"', '"Computer" :  7'),
    "Computer digits in a string": GOOD_ROW.replace('"web01"', '"1.0"'),
    "Computer digits in a string, spaced": GOOD_ROW.replace('"Computer": "web01"', '"Computer"\t: \t"17"'),
}
# Kinds the whole-block columnar read types itself (they are here to show they stay columnar).
COLUMNAR_KINDS = {
    "time with an offset",
    "port +500",
    "nested 40 deep",
    "a NUL escape",
    "port null",
    "cIP null",  # written as null: "" to both reads, as a null port is null (a missing cIP is odd)
    "port null beside an escaped quote",
    "a value ending in a column's name",
    "Computer digits in a string",
    "Computer digits in a string, spaced",
}
# Kinds msgspec's decode of the key columns reads as json.loads does (detector/sources/keys_json.py), so
# their block stays whole; polars' parse, which reads the block when msgspec cannot, sends them to the
# plain code.
DECODED_KINDS = {
    "a key twice",
    "an escaped key",
    "a value that is a column's name",
    "port null and a key twice",
    "port null beside a brace",
    "port null, written twice",
}
# A malformed detail value (a list where the user agent belongs): the pushed-down read checks details
# only in rows of candidate groups, so in a group that cannot fire the line counts as read, not skipped
# (docs/performance.md says so); findings are the same.
DETAIL_ONLY = {"nested 40 deep"}


def _whole(kind: str, key_reader: str) -> bool:
    """The kind's block is read whole by the columnar read with this key reader."""
    return kind in COLUMNAR_KINDS or (key_reader == "msgspec" and kind in DECODED_KINDS)


def _request(pushdown: bool) -> ReadRequest:
    return ReadRequest(WINDOW, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec() if pushdown else None)


def _reads(path: Path) -> list[tuple[str, int, dict[str, int]]]:
    """Per read (plain, then pushed down): the findings as JSON, rows read and skipped lines per file."""
    out = []
    for pushdown in (False, True):
        source = FileSource(path)
        rows = list(source.read(_request(pushdown)))
        stats = source.read_stats()
        findings = json.dumps(LOGIC.evaluate(rows, WINDOW), default=str, sort_keys=True)
        out.append((findings, stats["rowsRead"], stats["skippedByFile"]))
    return out


def _day(lines: list[str], line_break: str = "\n") -> str:
    return "".join(line + line_break for line in lines)


def _reads_of_a_block_with(line: str, line_break: str, path: Path) -> list[tuple[str, int, dict[str, int]]]:
    """_reads of one block: 29 ports of a scanner, 40 background rows, and `line` (as line 17)."""
    lines = [json.dumps(_scan_line(i, 1000 + i)) for i in range(29)]
    lines += [json.dumps(_scan_line(i % 60, 80, cip=f"203.0.113.{i}")) for i in range(40)]
    lines.insert(17, line)
    path.write_bytes(_day(lines, line_break).encode("utf-8"))
    return _reads(path)


@pytest.mark.parametrize("kind", sorted(ODD_LINES))
@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_one_odd_line_leaves_only_itself_to_the_plain_code(
    tmp_path: Path, plain_blocks: list[int], odd_lines: list[list[int]], kind: str, line_break: str, key_reader: str
) -> None:
    """The odd line carrying the scanner's 30th port: the block stays columnar but for that line, and
    the result is the plain read's to the row."""
    plain, fast = _reads_of_a_block_with(ODD_LINES[kind], line_break, tmp_path / "rows.jsonl")
    assert fast == plain
    assert not plain_blocks
    assert odd_lines == ([] if _whole(kind, key_reader) else [[17]])


def test_odd_lines_are_reported_once_with_the_plain_reads_line_numbers(tmp_path: Path) -> None:
    """Skipped lines in several blocks: counted once each, under the plain read's line numbers."""
    kinds = ["cut JSON", "null", "port http", "time yesterday", "nested 3,000 deep"]
    lines = []
    for block in range(6):
        lines += [json.dumps(_scan_line(i % 60, 2000 + 40 * block + i, cip=f"198.51.100.{block}")) for i in range(40)]
        lines.insert(len(lines) - 7, ODD_LINES[kinds[block % len(kinds)]])
    path = tmp_path / "rows.jsonl"
    path.write_text(_day(lines), encoding="utf-8")
    plain, fast = _reads(path)
    assert fast == plain
    assert plain[2] == {str(path): 6}


def test_a_block_of_mostly_odd_lines_is_read_row_by_row(
    tmp_path: Path, plain_blocks: list[int], odd_lines: list[list[int]]
) -> None:
    lines = [ODD_LINES["time with an offset"].replace("500", str(600 + i)) for i in range(10)]  # typed columnar
    lines += [ODD_LINES["cIP missing"]] * 5 + [ODD_LINES["port http"]] * 4
    lines += [json.dumps(_scan_line(i, 1000 + i)) for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text(_day(lines), encoding="utf-8")
    plain, fast = _reads(path)
    assert fast == plain
    assert plain_blocks and not odd_lines  # 9 odd lines of 29, more than _ODD_SHARE: the plain code reads the block
    assert 9 > file_module._ODD_SHARE * 29 > 5


# A CR that is not part of a line break (JSON reads it as whitespace between values): polars may cut a
# line there, so the block is read by the plain code whole, and must give its results.
LONE_CR_LINES = {
    "a CR between values": GOOD_ROW.replace(', "sIP"', ',\r"sIP"'),
    "a CR before the line break": GOOD_ROW + "\r",
    "a CR at the start": "\r" + GOOD_ROW,
    "a CR in a string": GOOD_ROW.replace("web01", "web\r01"),
}


@pytest.mark.parametrize("kind", sorted(LONE_CR_LINES))
@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_a_lone_cr_leaves_its_block_to_the_plain_code(
    tmp_path: Path, plain_blocks: list[int], odd_lines: list[list[int]], kind: str, line_break: str
) -> None:
    plain, fast = _reads_of_a_block_with(LONE_CR_LINES[kind], line_break, tmp_path / "rows.jsonl")
    assert fast == plain
    assert not odd_lines
    # With LF line breaks a CR before one makes a CRLF line: mixed line ends, which the columnar read takes.
    assert plain_blocks == ([] if (kind, line_break) == ("a CR before the line break", "\n") else [1])


@st.composite
def _lines(draw: st.DrawFn) -> list[str]:
    """Busy groups near the threshold (some fire, some miss by one) in any order, with a few odd lines
    of any kind, anywhere."""
    rows = []
    for group in range(draw(st.integers(1, 3))):
        ports = draw(st.integers(27, 32))
        rows += [
            json.dumps(
                _scan_line(draw(st.integers(0, 59)), 1000 + port, cip=f"198.51.100.{group}"),
                separators=draw(st.sampled_from([(", ", ": "), (",", ":")])),
            )
            for port in range(ports)
        ]
    odd = draw(st.lists(st.sampled_from(sorted(ODD_LINES)), max_size=6))
    for kind in odd:
        rows.insert(draw(st.integers(0, len(rows))), ODD_LINES[kind].replace("500", str(draw(st.integers(1000, 1040)))))
    # The first line is a row: a file that starts with anything else is no JSON Lines to either read.
    return [json.dumps(_scan_line(0, 80, cip="203.0.113.1")), *draw(st.permutations(rows))]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_lines(), st.sampled_from([1024, 4096, 1 << 20]), st.sampled_from(["\n", "\r\n"]))
def test_fast_and_plain_reads_agree_whatever_the_odd_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], block: int, line_break: str
) -> None:
    monkeypatch.setattr(file_module, "BLOCK_BYTES", block)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_day(lines, line_break).encode("utf-8"))
    plain, fast = _reads(path)
    if '"csUserAgent": [' in path.read_text():  # a DETAIL_ONLY kind
        assert fast[0] == plain[0]
    else:
        assert fast == plain


def test_the_odd_line_kinds_each_defeat_the_whole_block_read(key_reader: str) -> None:
    """Each kind above but COLUMNAR_KINDS is one the columnar read of a whole block refuses (else it would
    not test the odd-line path): checked against _columnar_keys itself."""
    spec = LOGIC.candidate_spec()
    assert spec is not None
    request = _request(True)
    good = [json.dumps(_scan_line(i, 1000 + i)) for i in range(20)]
    assert file_module._columnar_keys(_day(good).encode(), spec, request) is not None
    for kind, line in ODD_LINES.items():
        data = _day([*good[:10], line, *good[10:]]).encode("utf-8")
        assert (file_module._columnar_keys(data, spec, request) is None) == (not _whole(kind, key_reader)), kind


@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_after_an_odd_block_a_line_that_is_no_object_skips_the_whole_block_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line_break: str
) -> None:
    """Once a block of the read had odd lines, a block holding a line that is not one object (cut, an
    array, a string) goes to the odd-lines path at once, without the whole-block parse polars would fail
    at that line: only the blocks parsed before the first odd one was seen (BLOCKS_AHEAD at once) try it."""
    monkeypatch.setattr(file_module, "BLOCK_BYTES", 4096)
    tried: list[bool] = []  # per polars parse of key columns: did its bytes hold a line that is not one object?
    original = file_module._key_strings

    def spy(data: bytes, *args: object) -> object:
        pieces = [piece.rstrip(b"\r") for piece in data.split(b"\n")[:-1]]
        tried.append(not all(piece.startswith(b"{") and piece.endswith(b"}") for piece in pieces))
        return original(data, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(file_module, "_key_strings", spy)
    kinds = ["cut JSON", "an array", "a string", "trailing text"]
    lines = []
    for block in range(8):
        lines += [json.dumps(_scan_line(i % 60, 2000 + 40 * block + i, cip=f"198.51.100.{block}")) for i in range(30)]
        lines.insert(len(lines) - 9, ODD_LINES[kinds[block % len(kinds)]].replace("500", str(3000 + block)))
    path = tmp_path / "rows.jsonl"
    path.write_bytes(_day(lines, line_break).encode("utf-8"))
    plain, fast = _reads(path)
    assert fast == plain and sum(plain[2].values()) == 8
    assert tried.count(True) <= file_module.BLOCKS_AHEAD < 8 and len(tried) > 8


@pytest.mark.parametrize("line_break", ["\n", "\r\n"])
def test_a_line_cut_inside_a_string_is_reported_alike_by_both_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line_break: str
) -> None:
    """The plain read hands json a line with its LF, the fast read without: the same reason either way
    (not "Invalid control character" from one and "Unterminated string" from the other)."""
    cut = GOOD_ROW[: GOOD_ROW.index('"web01"') + 3]
    messages = []
    for pushdown in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING"):
            lines = [json.dumps(_scan_line(i, 1000 + i)) for i in range(29)]
            lines.insert(12, cut)
            path = tmp_path / "rows.jsonl"
            path.write_bytes(_day(lines, line_break).encode("utf-8"))
            list(FileSource(path).read(_request(pushdown)))
        messages.append([r.getMessage() for r in caplog.records if "skipped malformed line" in r.getMessage()])
    assert messages[0] == messages[1] and len(messages[0]) == 1
