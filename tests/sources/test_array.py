"""A JSON array of row objects (what `az monitor log-analytics query` prints): read as a stream, and its
fast first pass (response.py's scanner over objects) gives exactly the plain read's rows, findings,
skipped rows and errors, on any rows, any layout and any chunking."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import InputError
from detector.sources import response as response_module
from detector.sources.file import FileSource
from tests.sources.test_response import (
    COLUMNS,
    HOSTILE_STRINGS,
    ODD_VALUES,
    SCANNER,
    SURROGATE,
    _assert_same,
    _request,
    _row,
)


def _object(values: dict[str, Any]) -> dict[str, Any]:
    return dict(zip(COLUMNS, _row(values), strict=True))


def _scan(count: int = 30) -> list[dict[str, Any]]:
    """A scanner's rows: one bin, `count` ports (30 make a finding)."""
    return [_object({"sPort": port}) for port in range(count)]


def _az(rows: list[Any], *, layout: str = "az", ensure_ascii: bool = False) -> str:
    """The array as `az ... -o json` prints it (knack's format_json) or in another layout."""
    if layout == "az":
        rows = [{"TableName": "PrimaryResult", **row} if isinstance(row, dict) else row for row in rows]
        text = json.dumps(rows, ensure_ascii=ensure_ascii, indent=2, sort_keys=True) + "\n"
    elif layout == "compact":
        text = json.dumps(rows, separators=(",", ":"), ensure_ascii=ensure_ascii)
    elif layout == "spaced":
        text = json.dumps(rows, separators=(" , ", " : "), ensure_ascii=ensure_ascii)
    else:
        text = json.dumps(rows, indent="\t", ensure_ascii=ensure_ascii) + "\r\n"
    return text.replace(json.dumps(SURROGATE)[1:-1], "\\ud800")


# -- any rows, any layout, any chunking ---------------------------------------------------------------------


@st.composite
def clean_object(draw: st.DrawFn) -> dict[str, Any]:
    """A row near the scanner's group; its strings may hold `},{`, quotes, escapes and other scripts."""
    return _object(
        {
            "sPort": draw(st.integers(0, 40)),
            "cIP": draw(st.sampled_from([SCANNER["cIP"], SCANNER["cIP"], "198.51.100.1", "},{", "a\u00e9\U0001f600"])),
            "TimeGenerated": draw(
                st.sampled_from(["2026-11-26T10:03:00Z", "2026-11-26T10:09:59.9999999Z", "2026-11-25T23:59:59Z"])
            ),
            "csUriQuery": draw(st.one_of(HOSTILE_STRINGS, st.sampled_from(['"},{"', "},\n{", '{"cIP":"x"}']))),
        }
    )


@st.composite
def twisted(draw: st.DrawFn, row: Any) -> Any:
    """The row with one twist: not an object, a required column missing, a nested value, or an odd key,
    port or time."""
    if not isinstance(row, dict):
        return row
    twist = draw(st.integers(0, 6))
    if twist == 0:
        return draw(st.sampled_from(["not a row", 5, None, [], [row], [[1], [2]]]))
    if twist == 1:
        changed = dict(row)
        # A row twisted twice may have lost the column already.
        changed.pop(draw(st.sampled_from(["cIP", "sPort", "TimeGenerated", "Computer", "csUserAgent"])), None)
        return changed
    if twist == 2:
        return {**row, "csCookie": {"nested": [{"cIP": "x"}, {"sPort": 1}]}}  # `},{` inside a row
    column = ["cIP", "sPort", "TimeGenerated", "Computer"][twist - 3]
    return {**row, column: draw(st.sampled_from(ODD_VALUES[column]))}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.data(),
    st.sampled_from(["az", "compact", "spaced", "tabs"]),
    st.booleans(),
    st.sampled_from([16, 61, 4096]),
    st.sampled_from([1, 7, 1000]),
)
def test_fast_and_plain_reads_of_an_array_agree_on_any_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
    layout: str,
    ensure_ascii: bool,
    chunk: int,
    block_rows: int,
) -> None:
    """Strings holding `},{`, nested objects, lone surrogates, elements that are not objects, rows
    without a required column, odd times and ports, az's sorted and indented layout and others, a
    truncated array, something after it: the fast read says what the plain read says, whatever the
    chunk and block sizes (chunks of 16 bytes cut rows, numbers and characters)."""
    monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", block_rows)
    rows: list[Any] = _scan() + data.draw(st.lists(clean_object(), max_size=60))
    data.draw(st.randoms()).shuffle(rows)
    for _ in range(data.draw(st.integers(0, 2))):
        index = data.draw(st.integers(0, len(rows) - 1))
        rows[index] = data.draw(twisted(rows[index]))
    text = _az(rows, layout=layout, ensure_ascii=ensure_ascii)
    ending = data.draw(st.integers(0, 12))
    if ending == 0:
        text = text[: data.draw(st.integers(1, len(text) - 2))]  # truncated
    elif ending == 1:
        text += data.draw(st.sampled_from(["]", ",", "{}", "x", "[]"]))  # more after the array
    path = tmp_path / "array.json"
    path.write_text(text, encoding="utf-8")
    _assert_same(path)


# -- layouts and values, one by one ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [(column, value) for column in ("cIP", "sPort", "TimeGenerated") for value in ODD_VALUES[column]],
)
def test_an_odd_key_value_gives_the_plain_rows(tmp_path: Path, column: str, value: Any) -> None:
    rows = _scan(30)  # the odd row is the scanner's 30th port: reading it wrong changes the finding
    rows[17] = _object({"sPort": 17, column: value})
    path = tmp_path / "array.json"
    path.write_text(_az(rows), encoding="utf-8")
    _assert_same(path)


@pytest.mark.parametrize("missing", ["cIP", "sPort", "csUserAgent"])
def test_a_missing_column_is_what_the_plain_read_makes_of_it(tmp_path: Path, fallbacks: list[int], missing: str) -> None:
    """A required column missing: the row is skipped, in the plain read's words; a column that is not
    required: read as null. The fast read answers both (one odd row no longer sends the file to the
    plain read, which holds every row)."""
    rows = _scan(31)
    del rows[5][missing]
    path = tmp_path / "array.json"
    path.write_text(_az(rows), encoding="utf-8")
    outcome = _assert_same(path)
    required = missing != "csUserAgent"
    assert outcome[2] == int(required)
    assert not fallbacks


def test_a_repeated_key_takes_its_last_value_as_the_plain_read_does(tmp_path: Path) -> None:
    rows = _scan(29)
    text = _az(rows, layout="compact")
    repeated = '"cIP":"x","cIP":"203.0.113.9","Computer":"web01","sIP":"10.0.0.4","sPort":29,"sPort":99'
    text = text[:-1] + ',{"TimeGenerated":"2026-11-26T10:03:00Z",' + repeated + "}]"
    path = tmp_path / "array.json"
    path.write_text(text, encoding="utf-8")
    assert _assert_same(path)[1] != "[]"  # the last cIP is the scanner's, the last sPort its 30th port


@pytest.mark.parametrize(
    "text",
    ["[]", "[]\n", " [ ] ", "\ufeff[\n]\n", "[\n  {}\n]", "[1, 2]", '[{"cIP": "x"}] [', "[{}] x", "[", "[{", '[{"a":1},'],
)
def test_small_and_broken_arrays_are_the_plain_reads(tmp_path: Path, text: str) -> None:
    path = tmp_path / "array.json"
    path.write_text(text, encoding="utf-8")
    _assert_same(path)


def test_something_after_the_array_is_one_error_naming_the_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "array.json"
    text = _az(_scan(30))
    path.write_text(text + "[]", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        list(FileSource(path).read(_request(True)))
    assert str(caught.value).startswith(f"{path}:{text.count(chr(10)) + 1}: ")
    assert f"column 1, byte {len(text.encode())}" in str(caught.value)


def _error(path: Path, pushdown: bool = True) -> str:
    with pytest.raises(InputError) as caught:
        list(FileSource(path).read(_request(pushdown)))
    return str(caught.value)


@pytest.mark.parametrize("chunk", [13, 14, 15, 16, 1 << 20])
def test_the_errors_of_a_broken_array_say_where_and_what_whatever_the_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """A missing comma, a cut file, NUL padding, an integer too long for Python, invalid UTF-8 (also in a
    character cut by a chunk's end): one error each, naming the line, column or byte, never a traceback."""
    monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
    path = tmp_path / "array.json"
    text = _az(_scan(3))
    cases = {
        text.replace("},\n  {", "}\n  {", 1): "',' or ']' expected at column 3",
        text[: text.rindex("}") + 1]: "the end of the file: is it cut short?",
        text + "\x00" * 40: "NUL bytes after the array",
        text.replace('"csUriQuery": "-"', '"csUriQuery": ' + "1" * 5000, 1): "a value Python cannot read",
    }
    for content, said in cases.items():
        assert '"csUriQuery": "-"' in text
        path.write_text(content, encoding="utf-8")
        for pushdown in (True, False):
            assert said in _error(path, pushdown), (content[-40:], pushdown)
    broken = b'[{"cIP": "aaaa\xc3\xa9\xff"}]'
    path.write_bytes(broken)
    bad_byte = broken.index(b"\xff")
    assert _error(path).endswith(f"is not UTF-8 at byte {bad_byte} (invalid start byte); save the file as UTF-8")
    path.write_bytes(b'[{"cIP": "a\xc3')
    assert "is not UTF-8 at byte 11" in _error(path)


def test_an_array_after_blank_lines_is_an_array(tmp_path: Path) -> None:
    """json.load reads leading line breaks as whitespace: so do both reads (they once read such a file as
    JSON Lines and skipped every line)."""
    path = tmp_path / "array.json"
    path.write_text("\n\r\n  \n" + _az(_scan(30)), encoding="utf-8")
    outcome = _assert_same(path)
    assert outcome[0] == "ok" and outcome[1] != "[]" and outcome[2] == 0


@pytest.mark.parametrize("number", ["1.5", "1e2", "-1.25e+2", "123456789"])
def test_a_number_cut_by_a_chunks_end_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, number: str) -> None:
    """`1.` then `5`, `1e` then `2`: every chunk size puts some cut inside some number, in a row or an
    element of its own (skipped: not an object)."""
    rows: list[Any] = [item for row in _scan(30) for item in ({**row, "TimeTaken": "@"}, "@")]
    text = _az(rows, layout="compact").replace('"@"', number)
    path = tmp_path / "array.json"
    path.write_text(text, encoding="utf-8")
    for chunk in range(20, 200, 7):
        monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
        assert _assert_same(path)[0] == "ok", chunk


# -- the fast first pass is the one that ran, and memory stays flat ------------------------------------------


def test_an_az_array_is_scanned_in_the_tight_loop_and_typed_in_polars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: list[int]
) -> None:
    monkeypatch.setattr(response_module, "STREAM_CHUNK", 4096)
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 500)
    careful: list[int] = []
    coerced: list[int] = []
    value, keys = response_module.JsonStream.value, response_module._Rows._coerced

    def counted_value(self: response_module.JsonStream) -> Any:
        careful.append(1)
        return value(self)

    def counted_coerced(self: response_module._Rows, where: str, report: Any, explain: Any) -> Any:
        coerced.append(1)
        return keys(self, where, report, explain)

    monkeypatch.setattr(response_module.JsonStream, "value", counted_value)
    monkeypatch.setattr(response_module._Rows, "_coerced", counted_coerced)
    rows = [_object({"sPort": index % 20, "cIP": f"198.51.100.{index % 50}"}) for index in range(3000)] + _scan()
    path = tmp_path / "array.json"
    path.write_text(_az(rows), encoding="utf-8")
    source = FileSource(path)
    found = list(source.read(_request(True)))
    assert not fallbacks
    assert {row["cIP"] for row in found} == {SCANNER["cIP"]}
    assert source.read_stats()["rowsRead"] == len(rows)
    assert not coerced
    assert len(careful) <= path.stat().st_size // 4096 + 10  # a row or two per chunk


@pytest.mark.parametrize("pushdown", [True, False])
def test_reading_an_array_is_flat_as_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushdown: bool) -> None:
    """The fast read and the plain one (which once loaded the whole document): 4x the rows, about the
    same Python peak."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 2000)
    peaks = []
    for count in (10_000, 40_000):
        rows = [_object({"sPort": index % 20, "cIP": f"198.51.100.{index % 7}"}) for index in range(count)] + _scan()
        path = tmp_path / f"array{count}.json"
        path.write_text(_az(rows), encoding="utf-8")
        tracemalloc.start()
        source = FileSource(path)
        found = sum(1 for row in source.read(_request(pushdown)) if row["cIP"] == SCANNER["cIP"])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert found == 30
        assert source.read_stats()["rowsRead"] == count + 30
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_the_plain_read_of_a_bad_element_does_not_read_the_rest_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invalid JSON early in a big array: one error naming the byte, after reading about a chunk."""
    monkeypatch.setattr(response_module, "STREAM_CHUNK", 4096)
    rows = _scan(30) + [_object({"sPort": 1})] * 20_000
    text = _az(rows, layout="compact")
    bad = text.index("},{", 1000) + 1
    path = tmp_path / "array.json"
    path.write_text(text[:bad] + ",," + text[bad + 1 :], encoding="utf-8")
    read: list[int] = []
    more = response_module.JsonStream._more

    def counted(self: response_module.JsonStream) -> bool:
        read.append(1)
        return more(self)

    monkeypatch.setattr(response_module.JsonStream, "_more", counted)
    with pytest.raises(InputError) as caught:
        list(FileSource(path).read(_request(False)))
    assert f"byte {bad + 1}" in str(caught.value)
    assert len(read) <= 3


@pytest.mark.parametrize("shape", ["array", "response"])
def test_a_deeply_nested_value_in_a_row_is_read_alike_whatever_the_stack(tmp_path: Path, shape: str) -> None:
    """A row nested 985 deep (in a column the rule does not read): the first pass read it, and taking it
    from deeper down raised "changed while it was read". Every read parses it alike now."""
    from tests.sources.test_response import _body

    rows = [{**row, "csCookie": "@"} for row in _scan(30)]
    columns = [*COLUMNS, "csCookie"]
    text = _az(rows, layout="compact") if shape == "array" else _body([[r[c] for c in columns] for r in rows], columns=columns)
    path = tmp_path / f"{shape}.json"
    path.write_text(text.replace('"@"', "[" * 985 + "]" * 985, 1), encoding="utf-8")
    outcome = _assert_same(path)
    assert outcome[0] == "ok" and outcome[1] != "[]" and outcome[2] == 0


@pytest.mark.parametrize("chunk", [64, 4096, 1 << 20])
def test_an_error_deep_in_a_one_line_array_names_its_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """On one long line (az's compact output, a saved response) the column counts from the line's start,
    not from the buffer's after earlier text was dropped."""
    monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
    text = _az(_scan(30) * 200, layout="compact")
    bad = text.index("},{", len(text) // 2) + 1
    path = tmp_path / "array.json"
    path.write_text(text[:bad] + "@" + text[bad + 1 :], encoding="utf-8")
    message = _error(path, pushdown=False)
    assert f"{path}:1: " in message and f"column {bad + 1}, byte {bad}" in message


@pytest.mark.parametrize("shape", ["array", "response"])
@pytest.mark.parametrize(
    "odd", [{"sPort": "http"}, {"sPort": 1.5}, {"TimeGenerated": "yesterday"}, {"cIP": {"an": "object"}}, "not a row"]
)
def test_one_odd_row_is_skipped_by_the_fast_read_in_the_plain_reads_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fallbacks: list[int], shape: str, odd: Any
) -> None:
    """A key value the plain code refuses, or an element that is not a row: the fast read skips that row
    with the plain read's warning, instead of sending the whole file to the plain read (which holds every
    row: ~2 GB at 1M rows)."""
    from tests.sources.test_response import _body

    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 50)
    rows: list[Any] = [_object({"sPort": index % 20, "cIP": f"198.51.100.{index % 7}"}) for index in range(300)] + _scan()
    rows[123] = {**rows[123], **odd} if isinstance(odd, dict) else odd
    if shape == "array":
        text = _az(rows)
    else:
        text = _body([[row.get(c) for c in COLUMNS] if isinstance(row, dict) else row for row in rows])
    path = tmp_path / f"{shape}.json"
    path.write_text(text, encoding="utf-8")
    warnings = []
    for pushdown in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING"):
            source = FileSource(path)
            found = sum(1 for row in source.read(_request(pushdown)) if row["cIP"] == SCANNER["cIP"])
        assert found == 30 and source.read_stats()["skippedLines"] == 1
        warnings.append([r.getMessage() for r in caplog.records])
    assert warnings[0] == warnings[1] and "row 123" in warnings[0][0]
    assert not fallbacks
