"""A saved Log Analytics response body: the fast first pass (detector/sources/response.py) gives exactly the
plain read's rows, findings, skipped rows and errors, on any rows, any layout and any chunking."""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import InputError
from detector.models import Row
from detector.pushdown import SharedSpec
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.sources import ReadRequest
from detector.sources import candidates as candidates_module
from detector.sources import response as response_module
from detector.sources.file import FileSource
from tests.helpers import DAY, FILES, RULE

LOGIC = RULE.logic
COLUMNS = ["TenantId", "TimeGenerated", "cIP", "Computer", "sIP", "sPort", "csUserAgent", "csUriQuery"]
SCANNER = {"cIP": "203.0.113.9", "Computer": "web01", "sIP": "10.0.0.4"}
SURROGATE = "<lone surrogate>"  # written into the body as the escape \ud800 (json.dumps would write a pair or \\ud800)


def _request(pushdown: bool) -> ReadRequest:
    return ReadRequest(DAY, LOGIC.columns, LOGIC.required_columns, LOGIC.candidate_spec() if pushdown else None)


def _row(values: dict[str, Any], columns: list[str] = COLUMNS) -> list[Any]:
    base = {"TenantId": "t-1", "TimeGenerated": "2026-11-26T10:03:00Z", **SCANNER, "sPort": 80, "csUserAgent": "curl"}
    return [{**base, "csUriQuery": "-", **values}.get(c) for c in columns]


def _scan(count: int = 30) -> list[list[Any]]:
    """A scanner's rows: one bin, `count` ports (30 make a finding)."""
    return [_row({"sPort": port}) for port in range(count)]


def _body(
    rows: list[Any],
    *,
    columns: list[str] = COLUMNS,
    separators: tuple[str, str] = (",", ":"),
    indent: int | None = None,
    ensure_ascii: bool = True,
    tables_after: list[Any] | None = None,
    members_after: dict[str, Any] | None = None,
) -> str:
    table = {"name": "PrimaryResult", "columns": [{"name": c, "type": "string"} for c in columns], "rows": rows}
    document = {"tables": [table, *(tables_after or [])], **(members_after or {})}
    text = json.dumps(document, separators=separators, indent=indent, ensure_ascii=ensure_ascii)
    return text.replace(json.dumps(SURROGATE)[1:-1], "\\ud800")


def _outcome(path: Path, pushdown: bool) -> tuple[Any, ...]:
    """What a read gives: its rows, the rule's findings and the read's figures, or its error."""
    source = FileSource(path)
    try:
        rows = list(source.read(_request(pushdown)))
    except InputError as exc:
        return ("error", str(exc))
    stats = source.read_stats()
    findings = json.dumps(LOGIC.evaluate(rows, DAY), default=str, sort_keys=True)
    return ("ok", findings, stats["skippedLines"], stats["rowsRead"], rows)


def _subsequence(part: list[Row], whole: list[Row]) -> bool:
    rest = iter(whole)
    return all(any(row == other for other in rest) for row in part)


def _assert_same(path: Path, *, figures: bool = True) -> tuple[Any, ...]:
    """The fast read's outcome is the plain read's: the same error, or the same findings and (with
    `figures`) skipped rows and rows read, and rows that are the plain read's, in its order."""
    plain, fast = _outcome(path, False), _outcome(path, True)
    if plain[0] == "error" or fast[0] == "error":
        assert fast == plain
        return plain
    assert fast[1] == plain[1]
    if figures:
        assert fast[2:4] == plain[2:4]
    assert _subsequence(fast[4], plain[4])
    return plain


# -- any rows, any layout, any chunking ---------------------------------------------------------------------

STRINGS = [
    "],[",
    '"],["',
    '],["2026-11-26T10:03:00Z","203.0.113.9"],[',
    "\\",
    '\\"],[\\',
    "a\u00e9\u4e2d\U0001f600",
    SURROGATE,
    "\n\t",
    "",
    "-",
    "1.0",
    "true",
    "[1]",
]
ODD_KEYS: list[Any] = [*STRINGS, None, 1, 1.0, 100.0, 1e2, True, False, -7, [], ["a"], [[1], [2]], {"k": "],["}]
ODD_PORTS: list[Any] = [None, "", "-", "0042", " 7", "x", 3.0, 2.5, 1e2, True, False, -1, 2**63 - 1, 2**63, 2**70, [1], {"p": 1}]
ODD_TIMES: list[Any] = [
    "2026-11-26T10:05:30.5Z",
    "2026-11-26T10:09:59.9999999Z",
    "2026-11-26T10:09:59.12345678Z",
    "2026-11-25T23:59:59Z",
    "2026-11-26 10:01:00",
    "2026-11-26T10:02:00+01:00",
    "2026-11-26T11:02:00+01:00",  # 10:02 UTC: the row that makes the scanner's 30th port
    "2026-11-26t10:02:00z",
    "0000-01-01T00:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-11-26T24:00:00Z",
    "2026-11-26T10:60:00Z",
    None,
    20261126,
    "],[",
]
HOSTILE_STRINGS = st.sampled_from(STRINGS)
ODD_VALUES: dict[str, list[Any]] = {"cIP": ODD_KEYS, "Computer": ODD_KEYS, "sPort": ODD_PORTS, "TimeGenerated": ODD_TIMES}


@st.composite
def clean_row(draw: st.DrawFn, hostile_details: bool) -> list[Any]:
    """A row near the scanner's group that the fast typing takes (strings in a detail column can hold
    anything; with `hostile_details`, the user agent may be an object, which the plain code refuses)."""
    values: dict[str, Any] = {
        "sPort": draw(st.integers(0, 40)),
        "cIP": draw(st.sampled_from([SCANNER["cIP"], SCANNER["cIP"], "198.51.100.1", "],[", "a\u00e9\U0001f600"])),
        "TimeGenerated": draw(st.sampled_from(["2026-11-26T10:03:00Z", "2026-11-26T10:09:59.9999999Z", "2026-11-25T23:59:59Z"])),
        "csUriQuery": draw(HOSTILE_STRINGS),
    }
    if hostile_details:
        values["csUserAgent"] = draw(st.one_of(HOSTILE_STRINGS, st.just({"not": "a string"})))
    return _row(values)


@st.composite
def twisted(draw: st.DrawFn, row: Any) -> Any:
    """The row with one twist: not a list of the columns, or an odd key, port or time."""
    if not isinstance(row, list) or len(row) != len(COLUMNS):
        return row  # twisted already
    twist = draw(st.integers(0, 4))
    if twist == 0:
        return draw(st.sampled_from(["not a row", 5, None, {"cIP": "x"}, [], [[1], [2]], [*row, "extra"], row[:-1]]))
    column = ["cIP", "sPort", "TimeGenerated", "Computer"][twist - 1]
    changed = list(row)
    changed[COLUMNS.index(column)] = draw(st.sampled_from(ODD_VALUES[column]))
    return changed


STATISTICS = {"name": "Statistics", "columns": [{"name": "x"}], "rows": [[1], [2]]}  # `],[` after the rows
LAYOUTS = st.sampled_from(["compact", "spaced", "indented", "statistics after", "error after", "null error after"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    st.data(),
    LAYOUTS,
    st.booleans(),
    st.booleans(),
    st.sampled_from([16, 61, 4096]),
    st.sampled_from([1, 7, 1000]),
    st.sampled_from([0, 1000]),
)
def test_fast_and_plain_reads_of_a_saved_response_agree_on_any_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
    layout: str,
    ensure_ascii: bool,
    hostile_details: bool,
    chunk: int,
    block_rows: int,
    few_pieces: int,
) -> None:
    """Strings holding `],[` and escaped quotes, lone surrogates, numbers where strings belong, nested
    arrays, rows that are not a list of the columns, odd times and ports, spaced and indented bodies,
    other tables and an error member after the rows, a truncated body: the fast read says what the
    plain read says, whatever the chunk and block sizes (chunks of 16 bytes cut rows and characters),
    with rows taken one by one or sliced from their block read once (FEW_PIECES)."""
    monkeypatch.setattr(candidates_module, "FEW_PIECES", few_pieces)
    monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", block_rows)
    rows: list[Any] = _scan() + data.draw(st.lists(clean_row(hostile_details), max_size=60))
    data.draw(st.randoms()).shuffle(rows)
    for _ in range(data.draw(st.integers(0, 2))):  # a few twists, so the fast read is not always given up
        index = data.draw(st.integers(0, len(rows) - 1))
        rows[index] = data.draw(twisted(rows[index]))
    text = _body(
        rows,
        separators=(", ", ": ") if layout == "spaced" else (",", ":"),
        indent=1 if layout == "indented" else None,
        ensure_ascii=ensure_ascii,
        tables_after=[{"name": "Statistics", "columns": [{"name": "x"}], "rows": [[1], [2]]}]
        if layout == "statistics after"
        else None,
        members_after={"error": {"code": "PartialError"} if layout == "error after" else None} if "error" in layout else None,
    )
    if data.draw(st.integers(0, 9)) == 0:
        text = text[: data.draw(st.integers(text.index('"rows"'), len(text) - 1))]  # truncated
    path = tmp_path / "response.json"
    path.write_text(text, encoding="utf-8")
    _assert_same(path, figures=not hostile_details)


# -- layouts and values, one by one ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [(column, value) for column in ("cIP", "sPort", "TimeGenerated") for value in ODD_VALUES[column]]
    + [(column, value) for column in ("csUserAgent", "csUriQuery") for value in [*STRINGS, [[1], [2]], {"k": "v"}, 1.0, True]],
)
def test_an_odd_value_in_a_key_or_detail_column_gives_the_plain_rows(tmp_path: Path, column: str, value: Any) -> None:
    path = tmp_path / "response.json"
    rows = _scan(30)  # the odd row is the scanner's 30th port: reading it wrong changes the finding
    rows[17] = _row({"sPort": 17, column: value})
    path.write_text(_body(rows, ensure_ascii=False), encoding="utf-8")
    # A list or object in a detail column is typed only in rows the rule gets (a documented difference).
    _assert_same(path, figures=column in ODD_VALUES or not isinstance(value, list | dict))


@pytest.mark.parametrize(
    ("column", "value"), [(column, value) for column in ("cIP", "sPort", "TimeGenerated") for value in ODD_VALUES[column]]
)
def test_an_odd_key_value_leaves_only_its_row_to_the_plain_codes_typing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: list[int], column: str, value: Any
) -> None:
    """A number where a string belongs, a port as text or past Int64, a null or refused time, a lone
    surrogate: the row is typed by coerce_value (or skipped in the plain read's words), the block's other
    rows in polars."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 500)
    coerced: list[int] = []
    keys = response_module._Rows._coerced

    def counted_coerced(self: response_module._Rows, where: str, report: Any, explain: Any) -> Any:
        coerced.append(1)
        return keys(self, where, report, explain)

    monkeypatch.setattr(response_module._Rows, "_coerced", counted_coerced)
    rows = [_row({"sPort": index % 20, "cIP": f"198.51.100.{index % 50}"}) for index in range(400)] + _scan(30)
    rows[417] = _row({"sPort": 17, column: value})  # the scanner's row for port 17
    path = tmp_path / "response.json"
    path.write_text(_body(rows, ensure_ascii=False), encoding="utf-8")
    _assert_same(path)
    assert not fallbacks
    assert not coerced


@pytest.mark.parametrize("array", [False, True])
def test_a_skipped_row_leaves_no_block_behind_in_a_reference_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: list[int], array: bool
) -> None:
    """The explanation of a skipped row (a MalformedLine) must not lead back, through its traceback or
    context, to the frame holding the block: that cycle kept each block's rows and text (~100 MB on a
    real day) until the garbage collector ran. With the collector off, no block may outlive the read."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 50)
    rows = [_row({"sPort": index % 20, "cIP": f"198.51.100.{index % 7}"}) for index in range(300)] + _scan(30)
    for index in range(0, 300, 40):
        rows[index] = _row({"TimeGenerated": "yesterday"})  # the plain read skips it, saying why
    path = tmp_path / "body.json"
    if array:
        path.write_text(json.dumps([dict(zip(COLUMNS, row, strict=True)) for row in rows]), encoding="utf-8")
    else:
        path.write_text(_body(rows), encoding="utf-8")
    gc.collect()
    gc.disable()
    try:
        source = FileSource(path)
        assert len(list(source.read(_request(True)))) == 30
        assert source.read_stats()["skippedLines"] == 8
        alive = [o for o in gc.get_objects() if isinstance(o, response_module._Rows)]
    finally:
        gc.enable()
    assert not fallbacks
    assert alive == []


def test_a_truncated_body_is_the_plain_reads_error(tmp_path: Path) -> None:
    path = tmp_path / "response.json"
    text = _body(_scan(40))
    for cut in (len(text) - 3, text.index("],[", len(text) // 2) + 2, len(text) // 2):
        path.write_text(text[:cut], encoding="utf-8")
        outcome = _assert_same(path)
        assert outcome[0] == "error", cut


def test_an_error_member_after_the_rows_fails_the_fast_read_too(tmp_path: Path) -> None:
    path = tmp_path / "response.json"
    path.write_text(_body(_scan(40), members_after={"error": {"code": "PartialError"}}), encoding="utf-8")
    for pushdown in (False, True):
        with pytest.raises(InputError, match=r"carries an error \(PartialError\)"):
            list(FileSource(path).read(_request(pushdown)))


def test_a_repeated_column_takes_its_last_value_as_the_plain_read_does(tmp_path: Path) -> None:
    columns = [*COLUMNS, "cIP"]
    rows = [[*row, "198.51.100.77"] for row in _scan(40)]
    for index, row in enumerate(rows):
        row[COLUMNS.index("cIP")] = f"192.0.2.{index}"  # the first cIP column: no group of it can fire
    path = tmp_path / "response.json"
    path.write_text(_body(rows, columns=columns), encoding="utf-8")
    outcome = _assert_same(path)
    assert {finding["cIP"] for finding in json.loads(outcome[1])} == {"198.51.100.77"}


def test_a_null_key_and_an_empty_one_are_one_group_as_kql_strings_have_no_null(tmp_path: Path) -> None:
    rows = [_row({"sPort": port, "cIP": None if port % 2 else ""}) for port in range(30)]
    path = tmp_path / "response.json"
    path.write_text(_body(rows), encoding="utf-8")
    assert len(json.loads(_assert_same(path)[1])) == 1


def test_rows_are_counted_across_two_rows_members_as_the_plain_read_counts_them(tmp_path: Path) -> None:
    text = _body(_scan(40))
    second = json.dumps(["not a row", *_scan(35)], separators=(",", ":"))
    text = text.replace("]]}]}", f']],"rows":{second}' + "}]}")
    path = tmp_path / "response.json"
    path.write_text(text, encoding="utf-8")
    outcome = _assert_same(path)
    assert outcome[2] == 1  # "row 40", not a second "row 0"


@pytest.mark.parametrize("before", ["\n", " \r\n", "\t"])
def test_whitespace_before_the_body_is_read_as_the_plain_read_reads_it(tmp_path: Path, before: str) -> None:
    """Blank lines before the body (json.load reads them as whitespace): both reads read the response
    (they once took it for one JSON Lines row and skipped it)."""
    path = tmp_path / "response.json"
    path.write_text(before + _body(_scan(40), indent=1), encoding="utf-8")
    outcome = _assert_same(path)
    assert outcome[0] == "ok" and outcome[1] != "[]" and outcome[2] == 0


def test_a_bom_and_a_year_zero_time_are_read_as_the_plain_read_reads_them(tmp_path: Path) -> None:
    rows = _scan(40)
    rows[3] = _row({"sPort": 3, "TimeGenerated": "0000-01-01T00:00:00Z"})  # polars would read it; Python does not
    path = tmp_path / "response.json"
    path.write_bytes(b"\xef\xbb\xbf" + _body(rows).encode())
    assert _assert_same(path)[2] == 1


# -- the fast first pass is the one that ran ------------------------------------------------------------------


@pytest.mark.parametrize("layout", [{}, {"separators": (", ", ": ")}, {"indent": 2}])
def test_a_body_is_scanned_in_the_tight_loop_and_typed_in_polars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: list[int], layout: dict[str, Any]
) -> None:
    """Compact, spaced or indented: value() (the plain read's Python work per row) is left for the rows at
    a buffer's end, and every block is typed in polars (a row that is not a list too, outside the window)."""
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
    rows: list[Any] = [_row({"sPort": index % 20, "cIP": f"198.51.100.{index % 50}"}) for index in range(3000)] + _scan()
    rows[1234] = "not a row"
    path = tmp_path / "response.json"
    path.write_text(_body(rows, **layout), encoding="utf-8")
    size = path.stat().st_size
    source = FileSource(path)
    found = list(source.read(_request(True)))
    assert not fallbacks
    assert {row["cIP"] for row in found} == {SCANNER["cIP"]}
    assert source.read_stats()["skippedLines"] == 1
    assert source.read_stats()["rowsRead"] == len(rows) - 1
    assert not coerced  # the block with the row that is not a list is typed in polars too
    assert len(careful) <= 2 * size // 4096 + 20  # the columns, the table's members, a row or two per chunk


def test_a_row_ending_at_a_buffers_end_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A "]," inside a string misleads the guess of where the buffer's whole rows end: over these chunk
    sizes some row ends at a buffer's end, with a string's "]," before it."""
    rows = [_row({"sPort": port, "csUriQuery": "q=],[" * (port % 3)}) for port in range(30)]
    path = tmp_path / "response.json"
    path.write_text(_body(rows), encoding="utf-8")
    for chunk in range(20, 160, 3):
        monkeypatch.setattr(response_module, "STREAM_CHUNK", chunk)
        _assert_same(path)


def test_a_failing_block_sends_the_file_to_the_plain_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key value the plain code refuses: the plain read types every row and skips that one."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 7)
    rows = _scan(40)
    rows[20] = _row({"sPort": "eighty"})
    path = tmp_path / "response.json"
    path.write_text(_body(rows), encoding="utf-8")
    source = FileSource(path)
    assert len(list(source.read(_request(True)))) == 39  # every good row: the plain read's answer
    assert source.read_stats()["skippedLines"] == 1


def test_the_fast_read_is_flat_as_the_body_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python memory follows a block of rows, not the body: 4x the rows, about the same peak (the key
    frames held by the pushdown layer live in polars, outside tracemalloc, and grow with the rows read)."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 2000)
    peaks = []
    for count in (20_000, 80_000):
        rows = [_row({"sPort": index % 20, "cIP": f"198.51.100.{index % 7}"}) for index in range(count)] + _scan()
        path = tmp_path / f"response{count}.json"
        path.write_text(_body(rows), encoding="utf-8")
        tracemalloc.start()
        source = FileSource(path)
        found = list(source.read(_request(True)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(found) == 30  # the scanner's rows only: groups of 20 ports cannot fire
        assert source.read_stats()["rowsRead"] == count + 30
    assert peaks[1] < 1.5 * peaks[0], peaks


@pytest.mark.parametrize("shuffled", [False, True])
def test_one_shared_read_of_a_response_gives_every_rule_its_own_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallbacks: list[int], shuffled: bool
) -> None:
    """Every binned-threshold rule from one read (a SharedSpec: more key columns, filters on status and
    user) gives what each rule's plain read gives."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 500)
    lines = (FILES / "w3ciislog_logons.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if shuffled:
        random.Random(5).shuffle(records)
    columns = sorted({name for record in records for name in record})
    path = tmp_path / "response.json"
    path.write_text(_body([[record.get(c) for c in columns] for record in records], columns=columns), encoding="utf-8")
    rules = [rule for rule in load_rules(DEFAULT_RULES_DIR) if not rule.logic.whole_window]
    specs = [spec for rule in rules if (spec := rule.logic.candidate_spec()) is not None]
    columns_read = tuple(dict.fromkeys(c for rule in rules for c in rule.logic.columns))
    required = tuple(dict.fromkeys(c for rule in rules for c in rule.logic.required_columns))
    source = FileSource(path)
    shared = list(source.read(ReadRequest(DAY, columns_read, required, SharedSpec.of(specs))))
    assert not fallbacks  # the fast read answered
    fired = 0
    for rule in rules:
        plain = list(FileSource(path).read(ReadRequest(DAY, rule.logic.columns, rule.logic.required_columns)))
        expected = rule.logic.evaluate(plain, DAY)
        assert rule.logic.evaluate(shared, DAY) == expected, rule.id
        fired += bool(expected)
    assert fired >= 2


def test_the_plain_read_of_a_bad_row_does_not_read_the_rest_of_the_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invalid JSON early in a big body: one error naming the byte, after reading about a chunk (it once
    read on to the end of the file, holding it all)."""
    monkeypatch.setattr(response_module, "STREAM_CHUNK", 4096)
    text = _body(_scan(30) + [_row({"sPort": 1})] * 20_000)
    bad = text.index("],[", 1000) + 1
    path = tmp_path / "response.json"
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
