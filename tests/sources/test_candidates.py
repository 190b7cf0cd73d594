"""The fast (candidate pushdown) read of file: and iis: sources gives exactly the plain read's results.

The plain read (ReadRequest without candidates) is the straightforward reference: every row, typed by
coerce_row / W3cLayout.entry, evaluated by the rule. The fast read returns only rows of groups that can
reach the threshold; every rule's results (each rule in rules/, with its own description) must be
identical, on the fixtures and on seeded random days that include out-of-order rows, odd values that
force the row-by-row path, #Fields changes, the 128 cap and failed-logon bursts at and around each
rule's threshold.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from detector.errors import InputError
from detector.kql import CappedSet
from detector.logic.high_port_count import HighPortCountByClientIP
from detector.models import Window
from detector.pushdown import SharedSpec
from detector.rules import DEFAULT_RULES_DIR, Rule, load_rules
from detector.sources import LineReport, ReadRequest, Source
from detector.sources import candidates as candidates_module
from detector.sources import file as jsonl_module
from detector.sources import iis as iis_module
from detector.sources import response as response_module
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource
from tests.helpers import FILES

DAY = datetime(2026, 11, 26, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


def _spy_found(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bool]:
    """Records, call by call, whether module.name gave something (not None)."""
    found: list[bool] = []
    original = getattr(module, name)

    def spy(*args: Any) -> Any:
        result = original(*args)
        found.append(result is not None)
        return result

    monkeypatch.setattr(module, name, spy)
    return found


RULES: list[Rule] = [r for r in load_rules(DEFAULT_RULES_DIR) if not r.logic.whole_window]
# The binned-threshold rules (those that prune and share reads); the whole-window rules read alone and have
# their own tests (tests/test_window_rules_engine.py).


def test_every_rule_in_rules_declares_a_description_that_prunes() -> None:
    assert len(RULES) >= 3
    for rule in RULES:
        spec = rule.logic.candidate_spec()
        assert spec is not None and spec.prunes, rule.id


HIGH_PORT = next(r for r in RULES if r.id == "44a555d8-ecee-4a25-95ce-055879b4b14b")


def _logic() -> HighPortCountByClientIP:
    logic = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0].logic
    assert isinstance(logic, HighPortCountByClientIP)
    return logic


def _results(source: Source, window: Window, pushdown: bool, rule: Rule) -> tuple[list[dict[str, Any]], int]:
    logic = rule.logic
    request = ReadRequest(window, logic.columns, logic.required_columns, logic.candidate_spec() if pushdown else None)
    rows = list(source.read(request))
    return logic.evaluate(rows, window), len(rows)


class Compared:
    """Per rule: (plain rows, pushed-down rows, result rows)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, int, int]] = {}

    def pruned(self) -> bool:
        """Every rule's pushdown returned fewer rows than the plain read."""
        return all(fast < plain for plain, fast, _ in self.rows.values())

    def fired(self) -> set[str]:
        """Rules with at least one result row."""
        return {rule_id for rule_id, (_, _, results) in self.rows.items() if results}


def _assert_same(source: Source, window: Window = WINDOW, rules: list[Rule] = RULES) -> Compared:
    compared = Compared()
    for rule in rules:
        plain, plain_rows = _results(source, window, pushdown=False, rule=rule)
        fast, fast_rows = _results(source, window, pushdown=True, rule=rule)
        assert fast == plain, rule.id
        compared.rows[rule.id] = (plain_rows, fast_rows, len(plain))
    return compared


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few KB, so that small test files span many blocks and bins are finished on the way."""
    monkeypatch.setattr(jsonl_module, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(iis_module, "SMALL_RUN_BYTES", 300)  # runs of a few entries still make polars frames


@pytest.mark.parametrize("name", ["w3ciislog.jsonl", "w3ciislog_array.json", "la_response.json", "w3ciislog_logons.jsonl"])
def test_fixture_files_give_the_same_results(name: str) -> None:
    compared = _assert_same(FileSource(FILES / name))
    if name.endswith(".jsonl"):
        assert compared.pruned()  # the pushdown did run: rows of groups that cannot fire were skipped
    if name == "w3ciislog_logons.jsonl":
        assert compared.fired() >= {r.id for r in RULES if r.id.startswith(("19e01883", "884c4957"))}


def test_iis_fixture_gives_the_same_results() -> None:
    assert _assert_same(IisLogSource(FILES / "iis", "web01.contoso.com")).pruned()


def test_window_edges_inside_a_bin_give_the_same_results() -> None:
    source = FileSource(FILES / "w3ciislog.jsonl")
    _assert_same(source, Window(DAY + timedelta(hours=3, minutes=25), DAY + timedelta(hours=14, minutes=30, seconds=20)))
    source = FileSource(FILES / "w3ciislog_logons.jsonl")
    _assert_same(
        source, Window(DAY + timedelta(hours=3, minutes=25, seconds=30), DAY + timedelta(hours=14, minutes=30, seconds=20))
    )


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


def _logon_bursts(rng: random.Random) -> list[dict[str, Any]]:
    """Failed logons at and around both failed-logon rules' thresholds (20 per minute by client IP, 100 per
    10 minutes by user), with successes and "-" user names mixed in, which must not count."""
    rows = []
    for size in (19, 20, 21, 35):  # one client, one minute
        start = DAY + timedelta(minutes=rng.randrange(1440))
        client = f"192.0.2.{rng.randrange(1, 200)}"
        for index in range(size + 6):
            status, user = ("401", "CONTOSO\\bob") if index < size else rng.choice([("200", "bob"), ("401", "-"), ("403", "-")])
            rows.append(
                {
                    "TimeGenerated": (start + timedelta(seconds=rng.randrange(60))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Computer": "web01",
                    "sIP": "10.0.0.4",
                    "sPort": 443,
                    "cIP": client,
                    "csUserName": user,
                    "scStatus": rng.choice(["401", "403"]) if status != "200" else status,
                    "csUriQuery": rng.choice(["MailboxId=1&a=b", "X-ARR-CACHE-HIT=0&x=1&y", "-"]),
                }
            )
    for size in (99, 100, 130):  # one user, ten minutes, many clients
        start = DAY + timedelta(minutes=10 * rng.randrange(144))
        user = f"user{size}@contoso.com"
        for _ in range(size):
            rows.append(
                {
                    "TimeGenerated": (start + timedelta(seconds=rng.randrange(600))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Computer": "web02",
                    "sIP": "10.0.0.5",
                    "sPort": 443,
                    "cIP": f"203.0.113.{rng.randrange(1, 250)}",
                    "csUserName": user,
                    "scStatus": rng.choice(["401", "403"]),
                }
            )
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_random_json_lines_give_the_same_results(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    columnar = _spy_found(monkeypatch, jsonl_module, "_columnar_keys")
    rng = _rng(seed)
    rows = _random_rows(rng, 3000) + _scans(rng) + _logon_bursts(rng)
    if seed % 2 == 0:
        rows.sort(key=lambda r: r["TimeGenerated"])  # time-ordered: one pass, bins finished on the way
    else:
        rng.shuffle(rows)  # unordered: the finder sees a finished bin again and reads twice
    lines = [json.dumps(r, separators=(",", ":") if seed % 3 else (", ", ": ")) for r in rows]
    if seed == 2:
        lines[100] = lines[100].replace('"cIP":"', '"cIP":null, "x":"')  # a null key written so: "" to both reads
        lines.insert(200, "")  # a blank line
        lines[300] = lines[300].replace('"sPort":', '"sPort":"0042", "y":')  # a port as a string
    if seed == 4:
        lines[50] = lines[50].replace('"TimeGenerated":"2026-11-26T', '"TimeGenerated":"2026-11-26 ')  # not canonical: typed once
        lines[60] = lines[60].replace('"sPort":', '"sPort":7.5, "z":')  # a fractional port: row by row
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    compared = _assert_same(FileSource(path))
    assert compared.pruned()
    assert compared.fired() == {r.id for r in RULES}
    assert any(columnar)  # most blocks took the columnar path...
    assert not all(columnar) or seed != 4  # ...and the odd ones were read row by row


@pytest.mark.parametrize("endings", ["lf", "crlf", "mixed"])
@pytest.mark.parametrize("few", [0, 1_000_000])
def test_candidate_lines_are_taken_at_their_offsets(
    tmp_path: Path, endings: str, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Candidate lines are read back at the byte offsets the first pass found (one by one, or sliced
    from the block), for LF and CRLF files; mixed line ends leave the offsets unknown (re-split)."""
    monkeypatch.setattr(candidates_module, "FEW_PIECES", few)
    known = _spy_found(monkeypatch, jsonl_module, "_line_ends")
    rng = _rng(11)
    rows = _random_rows(rng, 2000) + _scans(rng)
    rng.shuffle(rows)
    lines = [json.dumps(r, separators=(",", ":")) for r in rows]
    breaks = {"lf": ["\n"], "crlf": ["\r\n"], "mixed": ["\n", "\r\n"]}[endings]
    path = tmp_path / "rows.jsonl"
    path.write_bytes("".join(line + rng.choice(breaks) for line in lines).encode("utf-8"))
    compared = _assert_same(FileSource(path), rules=[r for r in RULES if r.id.startswith("44a555d8")])
    assert compared.pruned() and compared.fired()
    assert known and (all(known) if endings != "mixed" else not all(known))  # a block may happen to end alike


def test_a_bad_key_value_is_reported_like_the_plain_path(tmp_path: Path) -> None:
    rows = _random_rows(_rng(9), 500)
    rows[321]["sPort"] = "eighty"
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # sPort is a key column of the port rule only: the others type it only in rows they get (file.py's
    # known difference), so they are not asked to report it.
    port_rule = [r for r in RULES if r.id.startswith("44a555d8")]
    error = _same_or_same_error(FileSource(path), FileSource(path, strict=True), rules=port_rule)
    assert error is not None
    assert ":322:" in error


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
    rows = sorted(_random_rows(rng, 3000) + _scans(rng) + _logon_bursts(rng), key=lambda r: r["TimeGenerated"])
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
        error = _same_or_same_error(source, IisLogSource(tmp_path, "web01", strict=True))
        assert error is not None
        assert "fields but #Fields declares" in error
        return
    compared = _assert_same(source)
    assert compared.pruned()
    assert compared.fired() == {r.id for r in RULES}


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


# --- IIS fast path: guards and paths added for speed (each must fall back to, or agree with, the plain read)


def _iis_day(rng: random.Random, fields: str = IIS_FIELDS_A, shuffle: bool = False) -> list[str]:
    rows = _random_rows(rng, 2000) + _scans(rng) + _logon_bursts(rng)
    if shuffle:
        rng.shuffle(rows)  # not time-ordered: many short timestamp runs, and bins seen again (two passes)
    else:
        rows.sort(key=lambda r: r["TimeGenerated"])
    head = ["#Software: Microsoft Internet Information Services 10.0", "#Date: 2026-11-25 23:50:00", f"#Fields: {fields}"]
    return head + [_iis_line(row, fields) for row in rows]


def _write_iis(tmp_path: Path, lines: list[str], newline: str = "\r\n", raw: bytes | None = None) -> IisLogSource:
    folder = tmp_path / "W3SVC1"
    folder.mkdir(exist_ok=True)
    path = folder / "u_ex261126.log"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return IisLogSource(tmp_path, "web01")


def _same_or_same_error(source: Source, strict: Source, rules: list[Rule] = RULES) -> str | None:
    """Fast and plain reads give the same findings and skip the same lines, and under strict reading both
    give the same findings or raise the same InputError (returned)."""
    errors = set()
    for rule in rules:
        logic = rule.logic
        for reader in (source, strict):
            outcomes = []
            for spec in (None, logic.candidate_spec()):
                try:
                    rows = list(reader.read(ReadRequest(WINDOW, logic.columns, logic.required_columns, spec)))
                    result = json.dumps(logic.evaluate(rows, WINDOW), default=str, sort_keys=True)
                    outcomes.append(("ok", result, reader.read_stats()["skippedByFile"]))
                except InputError as exc:
                    outcomes.append(("error", str(exc), {}))
            assert outcomes[0] == outcomes[1], rule.id
        assert outcomes[0][0] == "error" or not outcomes[0][2]  # strict reading never skips
        if outcomes[0][0] == "error":
            errors.add(outcomes[0][1])
    assert len(errors) <= 1  # every rule's strict read stops at the same line
    return errors.pop() if errors else None


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda line: line + " ", None),  # a trailing space: ignored, the fields are all there
        (lambda line: line + "  x", "fields but #Fields declares"),  # extra fields after an empty one (polars skips them)
        (lambda line: line.replace(" ", "  ", 1), "fields but #Fields declares"),  # an empty field in the middle
        (lambda line: line.rsplit(" ", 1)[0], "fields but #Fields declares"),  # the last field missing
        (lambda line: line.replace(" ", "\r", 1), "fields but #Fields declares"),  # a lone CR inside an entry
        (lambda line: line + "\r", None),  # CR CR LF: the plain read sees an extra blank line, nothing else
        (lambda line: line.replace("2026-11-", "2026-11-0", 1), "is not yyyy-mm-dd hh:mm:ss"),  # a bad date
        (lambda line: line[:16] + line[19:], None),  # hh:mm: fromisoformat takes it, so the plain read is used
        (lambda line: line.replace(" 10.0.0.4 ", " 10.0.0.4\x00 ", 1), "NUL bytes"),  # a NUL byte in a key
    ],
)
def test_iis_damaged_entry_deep_in_a_block_is_read_like_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any, error: str | None
) -> None:

    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 20)  # the whole file is one block
    lines = _iis_day(_rng(7))
    target = next(i for i, line in enumerate(lines) if "198.51.100." in line and i > 1000)  # a scanner's entry
    lines[target] = damage(lines[target])
    found = _same_or_same_error(_write_iis(tmp_path, lines), IisLogSource(tmp_path, "web01", strict=True))
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert error in found


def test_iis_lone_cr_that_splits_an_entry_into_two_valid_ones(tmp_path: Path) -> None:
    lines = _iis_day(_rng(8))
    lines[500] = lines[500] + "\r" + lines[501]  # CR alone between two entries: two lines to the plain read
    del lines[501]
    source = _write_iis(tmp_path, lines, newline="\n")
    assert _same_or_same_error(source, IisLogSource(tmp_path, "web01", strict=True)) is None


@pytest.mark.parametrize(
    ("old", "new", "columnar"),
    [
        (b"q=a+b%20c", b"q=a\xff\xfeb", True),  # in a detail field: keys read with U+FFFD elsewhere, columnar
        (b" 198.51.100.", b" 198.51.100.\xe2\x82", False),  # in a key: U+FFFD in a key, read by the plain code
    ],
)
def test_iis_invalid_utf8_is_decoded_like_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: bytes, new: bytes, columnar: bool
) -> None:

    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 20)  # one block, so one run of entries
    taken = []
    original = iis_module._columnar_keys

    def spy(*args: Any) -> Any:
        keys = original(*args)
        taken.append(keys is not None)
        return keys

    monkeypatch.setattr(iis_module, "_columnar_keys", spy)
    raw = ("\r\n".join(_iis_day(_rng(9))) + "\r\n").encode("utf-8")
    assert raw.count(old) > 10
    port_rule = [r for r in RULES if r.id.startswith("44a555d8")]  # the damaged key, cIP, is one of its keys
    assert _assert_same(_write_iis(tmp_path, [], raw=raw.replace(old, new)), rules=port_rule).pruned()
    assert taken == [columnar]


def test_iis_without_a_date_field_takes_the_day_from_the_date_directive(tmp_path: Path) -> None:
    fields = "time c-ip s-ip s-port cs-uri-query sc-status sc-win32-status"
    lines = _iis_day(_rng(10), fields)
    body = [line for line in lines if not line.startswith("#")]
    half = len(body) // 2
    out = [
        "#Date: 2026-11-26 00:00:00",
        f"#Fields: {fields}",
        *body[:half],
        "#Date: 2026-11-27 00:00:00",  # a new day: the same times now fall outside the window
        *body[half:],
    ]
    assert _assert_same(_write_iis(tmp_path, out)).pruned()


def test_iis_out_of_order_entries_take_the_two_pass_read(tmp_path: Path) -> None:
    assert _assert_same(_write_iis(tmp_path, _iis_day(_rng(11), shuffle=True))).pruned()


def test_unordered_input_with_odd_lines_reads_held_blocks_again_exactly(tmp_path: Path) -> None:
    """The two-pass read holds blocks detached (no bytes, no typed rows) and reads again those holding
    candidates: row-by-row blocks are typed again the same way, columnar ones re-read from their offset."""
    rng = _rng(14)
    rows = _random_rows(rng, 3000) + _scans(rng)
    rng.shuffle(rows)
    lines = [json.dumps(r, separators=(",", ":")) for r in rows]
    for index in range(0, len(lines), 97):  # odd lines all over the file: many blocks read row by row
        lines[index] = lines[index].replace('"TimeGenerated":"2026-11-26T', '"TimeGenerated":"2026-11-26 ')
    lines.insert(500, "not json")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = FileSource(path)
    assert _assert_same(source).pruned()
    assert source.read_stats()["skippedLines"] == 1

    iis = _iis_day(_rng(15), shuffle=True)
    for index in range(5, len(iis), 89):
        iis[index] = iis[index] + " extra"  # a field too many: that run is read entry by entry
    assert _assert_same(_write_iis(tmp_path, iis)).pruned()


@pytest.mark.parametrize(
    ("times", "dates", "typed"),
    [
        (["00:00:00", "00:00:00", "23:59:59"], ["2026-11-26"] * 3, True),
        (["23:59:59", "00:00:00", "00:00:01"], ["2026-11-26", "2026-11-27", "2026-11-27"], True),  # two dates
        (["24:00:00"], ["2026-11-26"], False),  # fromisoformat refuses hour 24
        (["23:60:00"], ["2026-11-26"], False),
        (["23:59:60"], ["2026-11-26"], False),  # no leap seconds either
        (["1:02:03"], ["2026-11-26"], False),  # not canonical
        (["00:00:00"], ["2026-02-30"], False),
        (["00:00:00"], ["0000-01-01"], False),  # year 0: polars would take it, Python does not
    ],
)
def test_iis_timestamps_are_typed_exactly_like_fromisoformat(times: list[str], dates: list[str], typed: bool) -> None:
    import polars as pl

    from detector.sources import LineReport
    from detector.sources.candidates import microseconds
    from detector.sources.iis import W3cLayout, _moments

    logic = _logic()
    request = ReadRequest(WINDOW, logic.columns, logic.required_columns, logic.candidate_spec())
    layout = W3cLayout.initial(Path("u_ex.log"), request, "web01", LineReport()).directive(
        "#Fields: date time c-ip s-ip s-port", 1
    )
    frame = pl.DataFrame({"column_1": dates, "column_2": times})
    moments = _moments(frame, layout, [f"column_{i}" for i in range(1, 6)])
    if not typed:
        assert moments is None
        return
    assert moments is not None
    expected = [microseconds(datetime.fromisoformat(f"{d} {t}").replace(tzinfo=UTC)) for d, t in zip(dates, times, strict=True)]
    assert moments.to_list() == expected


def test_line_blocks_cut_at_line_ends_and_grow_for_long_lines(tmp_path: Path) -> None:
    from detector.sources.candidates import line_blocks

    rng = _rng(12)
    text = b"".join(b"x" * rng.choice([0, 3, 15, 16, 17, 40]) + b"\n" for _ in range(300)) + b"tail"
    path = tmp_path / "lines.log"
    path.write_bytes(b"\xef\xbb\xbf" + text)
    with path.open("rb", buffering=0) as handle:
        blocks = [data for _, data in line_blocks(handle, 3, 16)]
    assert b"".join(blocks) == text
    assert all(block.endswith(b"\n") for block in blocks[:-1])
    assert blocks[-1].endswith(b"tail")


@pytest.mark.parametrize("pread", [True, False])
@pytest.mark.parametrize("block", [1, 16, 40, 1 << 20])
def test_line_spans_cover_the_file_in_whole_lines(
    tmp_path: Path, block: int, pread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans of whole lines, found by reading only around each cut (here 7 bytes at a time): lines
    longer than a block or than the tail read, an empty file body, a last line without its break; with
    os.pread and, as on Windows, without it."""
    import os

    import detector.sources.candidates as candidates_module
    from detector.sources.candidates import line_spans, read_span

    monkeypatch.setattr(candidates_module, "_TAIL", 7)
    if not pread:
        monkeypatch.delattr(os, "pread")
    rng = _rng(12)
    for tail in (b"tail", b"", b"\n"):
        text = b"".join(b"x" * rng.choice([0, 3, 15, 16, 17, 40, 100]) + b"\n" for _ in range(300)) + tail
        path = tmp_path / "lines.log"
        path.write_bytes(b"\xef\xbb\xbf" + text)
        with path.open("rb", buffering=0) as handle:
            fd = handle.fileno()
            spans = list(line_spans(fd, 3, os.fstat(fd).st_size, block))
            blocks = [read_span(fd, offset, length, "lines.log") for offset, length in spans]
        assert b"".join(blocks) == text
        assert all(offset + length == following for (offset, length), (following, _) in itertools.pairwise(spans))
        assert all(data.endswith(b"\n") for data in blocks[:-1])
        assert all(len(data) <= block or data.count(b"\n") == 1 for data in blocks[:-1])  # one long line alone


def test_groups_sharing_a_hash_still_give_the_same_results(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Groups are keyed by a 64-bit hash; a collision may only add rows, never lose a finding. Make every
    group collide and check the results are still exactly the plain read's."""
    import polars as pl

    import detector.sources.candidates as candidates_module

    def one_hash(keys: Any) -> pl.Expr:
        return pl.lit(7, dtype=pl.UInt64).alias(candidates_module.GROUP)

    monkeypatch.setattr(candidates_module, "group_hash", one_hash)
    _assert_same(IisLogSource(FILES / "iis", "web01.contoso.com"))
    _assert_same(FileSource(FILES / "w3ciislog.jsonl"))
    _assert_same(_write_iis(tmp_path, _iis_day(_rng(13))))


@pytest.mark.parametrize("order", ["ordered", "shuffled"])
def test_decisions_in_parts_and_in_batches_give_the_same_results(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, order: str
) -> None:
    """The finder decides many tuples in parts by group hash, and finished bins in batches: with tiny
    parts and batches (many of each on a small day) the results are still exactly the plain read's."""
    import detector.sources.candidates as candidates_module

    monkeypatch.setattr(candidates_module, "DECIDE_ROWS", 40)
    monkeypatch.setattr(candidates_module, "FINISH_ROWS", 30)
    decided: list[int] = []  # tuples decided at once, by either finder
    original = candidates_module.CandidateFinder._decide
    original_cells = candidates_module.CellFinder.result

    def spy(self: Any, frames: list[Any]) -> Any:
        decided.append(sum(frame.height for frame in frames))
        return original(self, frames)

    def spy_cells(self: Any) -> Any:
        decided.append(self._rows)
        return original_cells(self)

    monkeypatch.setattr(candidates_module.CandidateFinder, "_decide", spy)
    monkeypatch.setattr(candidates_module.CellFinder, "result", spy_cells)
    rng = _rng(21)
    rows = _random_rows(rng, 3000) + _scans(rng) + _logon_bursts(rng)
    if order == "ordered":
        rows.sort(key=lambda r: r["TimeGenerated"])
    else:
        rng.shuffle(rows)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    compared = _assert_same(FileSource(path))
    assert compared.fired() == {r.id for r in RULES}
    assert max(decided) > 40  # some decision was made in parts
    _assert_same(_write_iis(tmp_path, _iis_day(_rng(22))))


@pytest.mark.parametrize("column", ["cIP", "sPort", "TimeGenerated", "escaped cIP"])
def test_a_repeated_key_column_is_read_as_json_loads_reads_it(tmp_path: Path, column: str) -> None:
    """json.loads keeps the last of a repeated key, polars the first: a block repeating a column the
    pushdown reads must not be pruned on polars' values (here a scan would drop below the threshold)."""
    rng = _rng(16)
    start = DAY + timedelta(hours=5)
    scan = [
        {"TimeGenerated": (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), "Computer": "web01",
         "sIP": "10.0.0.4", "sPort": 1000 + i, "cIP": "198.51.100.7"}
        for i in range(35)
    ]  # fmt: skip
    decoys: dict[str, Callable[[int], str]] = {
        "cIP": lambda i: f'"cIP":"203.0.113.{i}",',
        "sPort": lambda i: '"sPort":80,',  # polars sees port 80 on 10 lines: 25 distinct ports, below 30
        "TimeGenerated": lambda i: '"TimeGenerated":"2026-11-20T00:00:00Z",',  # another day: outside the window
        "escaped cIP": lambda i: f'"c\\u0049P":"203.0.113.{i}",',  # the same name to both parsers, not to a byte count
    }
    lines = [json.dumps(r, separators=(",", ":")) for r in _random_rows(rng, 200)]
    for i, row in enumerate(scan):
        text = json.dumps(row, separators=(",", ":"))
        lines.append("{" + decoys[column](i) + text[1:] if i < 10 else text)
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, _ = _results(FileSource(path), WINDOW, pushdown=False, rule=HIGH_PORT)
    assert any(result["cIP"] == "198.51.100.7" for result in plain)
    _assert_same(FileSource(path))


@pytest.mark.parametrize("shuffled_site", [None, 2])
def test_iis_sites_of_one_day_are_merged_by_time(tmp_path: Path, two_pass_reads: list[int], shuffled_site: int | None) -> None:
    """Each site's file of the day starts at midnight: read side by side, merged by time, bins are still
    finished on the way (one pass); a site whose entries go back in time makes it the two-pass read.
    Either way the results are the plain read's. Sites share addresses and scanners, so groups span files,
    and header blocks come every few entries."""
    rng = _rng(17)
    rows = _random_rows(rng, 4000) + _scans(rng) + _scans(rng) + _logon_bursts(rng)
    sites: list[list[dict[str, Any]]] = [[], [], []]
    for row in rows:
        sites[rng.randrange(3)].append(row)  # a scan's ports spread over three files
    for index, site in enumerate(sites):
        if index == shuffled_site:
            rng.shuffle(site)
        else:
            site.sort(key=lambda r: r["TimeGenerated"])
        lines: list[str] = []
        for number, row in enumerate(site):
            if number % rng.randint(1, 8) == 0:
                lines += [
                    "#Software: Microsoft Internet Information Services 10.0",
                    f"#Date: {row['TimeGenerated'][:10]} 00:00:00",
                ]
                lines.append(f"#Fields: {IIS_FIELDS_A}")
            lines.append(_iis_line(row, IIS_FIELDS_A))
        folder = tmp_path / f"W3SVC{index + 1}"
        folder.mkdir()
        (folder / "u_ex261126.log").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    source = IisLogSource(tmp_path, "web01")
    assert _assert_same(source, rules=[HIGH_PORT]).pruned()
    assert bool(two_pass_reads) == (shuffled_site is not None)
    two_pass_reads.clear()
    shared, shared_rows = _shared_results(source)  # every rule in one read: each part's bins finished alike
    assert shared == _own_results(source)[0]
    assert shared_rows < int(str(source.read_stats()["rowsRead"]))  # pruned: the pushdown ran, not the plain read
    assert bool(two_pass_reads) == (shuffled_site is not None)


RESPONSE_COLUMNS = ["TenantId", "TimeGenerated", "sSiteName", "csMethod", "csUriQuery", "sIP", "sPort", "cIP",
                    "csUserName", "csUserAgent", "scStatus", "scSubStatus", "scWin32Status", "Computer"]  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_a_saved_response_gives_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """A saved Log Analytics response, read as a stream in small chunks and small blocks (so block starts
    fall anywhere in a chunk), in time order or not, with odd rows: not a list, a number where an
    address belongs, a lone surrogate escape in a key, a port as a digit string, rows outside the window."""
    monkeypatch.setattr(response_module, "RESPONSE_BLOCK_ROWS", 97)
    monkeypatch.setattr(response_module, "STREAM_CHUNK", 61 if seed % 2 else 4096)
    rng = _rng(20 + seed)
    rows = _random_rows(rng, 3000) + _scans(rng)
    if seed < 2:
        rows.sort(key=lambda r: r["TimeGenerated"])
    else:
        rng.shuffle(rows)
    values: list[Any] = [[row.get(c) for c in RESPONSE_COLUMNS] for row in rows]
    if seed >= 1:
        values[10] = "not a row"
        values[20] = values[20][:-1]  # a value short
        values[30][RESPONSE_COLUMNS.index("cIP")] = 7  # a number: the plain code makes it "7"
        values[40][RESPONSE_COLUMNS.index("sPort")] = "0042"
        values[50][RESPONSE_COLUMNS.index("cIP")] = "198.51.100.\ud800" if seed % 2 else "198.51.100.9"
        values[60][RESPONSE_COLUMNS.index("TimeGenerated")] = "2026-11-25T23:59:59.9999999Z"
    body = {"tables": [{"name": "PrimaryResult", "columns": [{"name": c, "type": "string"} for c in RESPONSE_COLUMNS],
                        "rows": values}]}  # fmt: skip
    path = tmp_path / "response.json"
    for index in range(0, len(values), 7):  # characters of 2, 3 and 4 bytes, written as themselves
        if isinstance(values[index], list) and len(values[index]) == len(RESPONSE_COLUMNS):
            values[index][RESPONSE_COLUMNS.index("csUserAgent")] = "Mozilla/5.0 (é; 中文; \U0001f600)"
    text = json.dumps(body, separators=(",", ":") if seed % 2 else (", ", ": "), ensure_ascii=bool(seed % 2))
    path.write_text(text, encoding="utf-8")
    source = FileSource(path)
    assert _assert_same(source).pruned()
    assert source.read_stats()["skippedLines"] == (2 if seed >= 1 else 0)


def test_a_response_key_the_plain_code_refuses_is_skipped_by_the_fast_read(tmp_path: Path) -> None:
    """The row is skipped (and said why) as the plain read skips it; the rest stays pruned."""
    rng = _rng(24)
    rows = _random_rows(rng, 500) + _scans(rng)
    values = [[row.get(c) for c in RESPONSE_COLUMNS] for row in rows]
    values[5][RESPONSE_COLUMNS.index("sPort")] = "eighty"  # the plain read skips the row and says why
    body = {"tables": [{"name": "PrimaryResult", "columns": [{"name": c} for c in RESPONSE_COLUMNS], "rows": values}]}
    path = tmp_path / "response.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    source = FileSource(path)
    compared = _assert_same(source, rules=[HIGH_PORT])
    assert compared.pruned()  # the fast read answered
    assert source.read_stats()["skippedLines"] == 1


# --- one read for several rules: a SharedSpec answers every rule's description in the same passes


def _shared_results(source: Source, window: Window = WINDOW) -> tuple[dict[str, list[dict[str, Any]]], int]:
    specs = [rule.logic.candidate_spec() for rule in RULES]
    columns = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.columns))
    required = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.required_columns))
    rows = list(source.read(ReadRequest(window, columns, required, SharedSpec.of(s for s in specs if s is not None))))
    return {rule.id: rule.logic.evaluate(rows, window) for rule in RULES}, len(rows)


def _own_results(source: Source, window: Window = WINDOW) -> tuple[dict[str, list[dict[str, Any]]], int]:
    results, largest = {}, 0
    for rule in RULES:
        found, rows = _results(source, window, pushdown=True, rule=rule)
        results[rule.id], largest = found, max(largest, rows)
    return results, largest


def _day_of_every_rule(tmp_path: Path, rng: random.Random, *, shuffled: bool, shape: str) -> Source:
    """Random rows with scans and logon bursts (every rule finds something), as JSON Lines or an IIS log;
    shuffled, bins are seen again: the two-pass strategy, for every part at once."""
    rows = _random_rows(rng, 3000) + _scans(rng) + _logon_bursts(rng)
    if shuffled:
        rng.shuffle(rows)
    else:
        rows.sort(key=lambda r: r["TimeGenerated"])
    if shape == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return FileSource(path)
    lines = ["#Software: Microsoft Internet Information Services 10.0", f"#Fields: {IIS_FIELDS_A}"]
    return _write_iis(tmp_path, lines + [_iis_line(r, IIS_FIELDS_A) for r in rows])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", ["jsonl", "iis"])
def test_one_shared_read_gives_every_rule_its_own_results(tmp_path: Path, seed: int, shape: str) -> None:
    rng = _rng(200 + seed)
    source = _day_of_every_rule(tmp_path, rng, shuffled=bool(seed % 2), shape=shape)
    shared, shared_rows = _shared_results(source)
    own, largest_own = _own_results(source)
    assert shared == own
    assert {rule_id for rule_id, found in own.items() if found} == {r.id for r in RULES}
    assert largest_own <= shared_rows < int(str(source.read_stats()["rowsRead"]))  # a superset of each, far from every row
    window = Window(DAY + timedelta(hours=2, minutes=7), DAY + timedelta(hours=20, minutes=30))
    assert _shared_results(source, window)[0] == _own_results(source, window)[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", ["jsonl", "iis"])
def test_each_part_of_a_shared_read_is_pruned_over_its_own_window(tmp_path: Path, seed: int, shape: str) -> None:
    """SharedSpec.windows: each rule's part over a window of its own (what a rule without a bin, or a rule
    due for another window, brings to a shared read) gives that rule its own read's results there, and
    keeps no row outside every part's window."""
    rng = _rng(300 + seed)
    source = _day_of_every_rule(tmp_path, rng, shuffled=bool(seed % 2), shape=shape)
    starts = sorted(rng.sample(range(0, 20 * 60, 10), len(RULES)))
    own_windows = [Window(DAY + timedelta(minutes=s), DAY + timedelta(minutes=s + rng.choice([10, 60, 240]))) for s in starts]
    specs = [rule.logic.candidate_spec() for rule in RULES]
    columns = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.columns))
    required = tuple(dict.fromkeys(c for rule in RULES for c in rule.logic.required_columns))
    spec = SharedSpec.of([s for s in specs if s is not None], own_windows)
    rows_read = list(source.read(ReadRequest(WINDOW, columns, required, spec)))
    assert all(any(w.contains(row["TimeGenerated"]) for w in own_windows) for row in rows_read)
    for rule, own in zip(RULES, own_windows, strict=True):
        assert rule.logic.evaluate(rows_read, own) == _results(source, own, pushdown=True, rule=rule)[0], rule.id


def test_a_shared_description_read_as_a_plain_one_is_a_superset_for_every_rule() -> None:
    """A source that does not know SharedSpec sees the union of the filters and no pruning."""
    from detector.pushdown import CandidateSpec, Count, Threshold, column

    a = CandidateSpec(filter=column("scStatus").eq("404"), keys=("cIP",), threshold=Threshold(">=", 5))
    b = CandidateSpec(keys=("cIP",), measure=Count(), threshold=Threshold(">=", 9))
    assert not SharedSpec.of([a, b]).prunes and SharedSpec.of([a, b]).filter is None  # b reads every row
    both = SharedSpec.of([a, SharedSpec.of([a])])
    assert both.specs == (a, a) and both.filter is not None
    assert both.admits({"scStatus": "404"}) and not both.admits({"scStatus": "200"})
    assert set(SharedSpec.of([a, b]).columns()) == {"TimeGenerated", "cIP", "scStatus"}
    # Windows: one per spec or none; a flattened SharedSpec keeps its parts' own windows.
    day = Window(DAY, DAY + timedelta(days=1))
    hour = Window(DAY, DAY + timedelta(hours=1))
    assert SharedSpec.of([a, b]).windows == () and SharedSpec.of([a, b], [None, None]).windows == ()
    assert SharedSpec.of([SharedSpec.of([a, b], [hour, None]), a], [day, None]).windows == (hour, day, None)
    with pytest.raises(ValueError, match="a window for each"):
        SharedSpec.of([a, b], [hour])


def _stats_and_results(path: Path, rule: Rule) -> list[tuple[Any, ...]]:
    """Per read (plain, then pushed down): the rule's results and the source's rowsRead and skipped lines."""
    out = []
    for pushdown in (False, True):
        source = FileSource(path)
        results, _ = _results(source, WINDOW, pushdown=pushdown, rule=rule)
        stats = source.read_stats()
        out.append((results, stats["rowsRead"], stats["skippedByFile"]))
    return out


def _scan_line(second: int, port: int, cip: str = "198.51.100.9", **extra: Any) -> dict[str, Any]:
    return {"TimeGenerated": f"2026-11-26T05:00:{second:02d}Z", "Computer": "web01", "sIP": "10.0.0.4", "cIP": cip,
            "sPort": port, **extra}  # fmt: skip


def test_a_lone_surrogate_escape_in_a_key_is_read_as_the_plain_read_reads_it(tmp_path: Path) -> None:
    """polars reads a lone high surrogate escape as U+0000 (a lone low one it refuses); the plain read
    makes it U+FFFD. Half a scan from "\\ud800" and half from "\\ufffd" is one scan of 30 ports."""
    lines = [
        json.dumps(_scan_line(i, 1000 + i, "PLACE")).replace("PLACE", "x\\ud800" if i % 2 else "x\\ufffd") for i in range(30)
    ]
    lines += [json.dumps(_scan_line(40, 80, "x\\ud83d\\ude00"))]  # a valid pair stays columnar
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert plain[0] and [r["cIP"] for r in plain[0]] == ["x\ufffd"]
    assert fast == plain


def test_rows_read_counts_rows_a_filter_rejects_in_a_block_read_row_by_row(tmp_path: Path) -> None:
    """A block the columnar pass leaves to the plain code (a non-canonical time) still counts every row
    of the window as read, the ones the rule's filter rejects too."""
    logons = next(r for r in RULES if r.id.startswith("19e01883"))
    rows = [_scan_line(i, 443, scStatus="401" if i % 3 else "200", csUserName="-") for i in range(20)]
    lines = [json.dumps(r) for r in rows]
    lines[5] = lines[5].replace('"sPort": 443', '"sPort": 443.0')  # polars renders "443.0": read row by row
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, logons)
    assert plain[1] == 20
    assert fast == plain


def test_rows_read_leaves_out_a_candidate_row_skipped_for_a_bad_detail_value(tmp_path: Path) -> None:
    """A candidate row whose detail column (read only when rows are taken) is malformed is skipped, and
    like the plain read the fast read does not count it as read."""
    rows = [_scan_line(i, 1000 + i) for i in range(35)]
    rows[3]["csUserAgent"] = {"bad": 3}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert plain[1] == 34 and sum(plain[2].values()) == 1
    assert fast == plain


def test_year_zero_is_skipped_as_the_plain_read_skips_it(tmp_path: Path) -> None:
    """polars parses 0000-01-01; Python's datetime has no year 0, so the plain read skips the line."""
    lines = [json.dumps(_scan_line(i, 1000 + i)) for i in range(30)]
    lines.append(json.dumps({**_scan_line(0, 9), "TimeGenerated": "0000-01-01T00:00:00Z"}))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert plain[0] and sum(plain[2].values()) == 1
    assert fast == plain


def test_a_reader_closed_early_stops_its_workers_before_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the block reader (the one-pass read gives up on shuffled input) shuts its workers down
    while the file is still open, so no worker reads a closed (or reused) file descriptor."""
    import concurrent.futures
    import os
    import threading

    from detector.sources.candidates import read_span

    descriptors: list[int] = []
    open_at_shutdown: list[bool] = []

    def spy(fd: int, offset: int, length: int, where: str) -> bytes:
        descriptors.append(fd)
        return read_span(fd, offset, length, where)

    class Pool(concurrent.futures.ThreadPoolExecutor):
        def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
            try:
                os.fstat(descriptors[0])
                open_at_shutdown.append(True)
            except OSError:
                open_at_shutdown.append(False)
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(jsonl_module, "read_span", spy)
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", Pool)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _random_rows(_rng(30), 3000)), encoding="utf-8")
    request = ReadRequest(WINDOW, HIGH_PORT.logic.columns, HIGH_PORT.logic.required_columns, HIGH_PORT.logic.candidate_spec())
    assert request.candidates is not None
    blocks = jsonl_module._blocks(path, request, request.candidates, LineReport(False))
    next(blocks)
    blocks.close()
    assert open_at_shutdown == [True]
    assert not [t for t in threading.enumerate() if t.name.startswith("jsonl-keys")]


def test_a_quiet_site_does_not_hold_a_busy_sites_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sites' logs of one day, merged by time: the quiet site's one block spans the day, the busy
    site's many blocks each a few minutes. The busy blocks are taken and freed as their bins are decided,
    not held behind the quiet block until the end (memory would follow the day)."""
    import detector.sources.candidates as candidates_module

    monkeypatch.setattr(candidates_module, "FINISH_ROWS", 1)
    rng = _rng(40)
    busy = _iis_day(rng)
    quiet = busy[:3] + busy[3 :: len(busy) // 6]  # the header, then a handful of entries over the day
    for site, lines in (("W3SVC1", busy), ("W3SVC2", quiet)):
        folder = tmp_path / site
        folder.mkdir()
        (folder / "u_ex261126.log").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    source = IisLogSource(tmp_path, "web01")
    events: list[str] = []
    original_merged, original_take = candidates_module.time_merged, candidates_module._take_all

    def merged(streams: Any) -> Any:
        for block in original_merged(streams):
            events.append("read")
            yield block

    def take(blocks: Any, parts: Any, found: Any) -> Any:
        events.extend(["taken"] * len(blocks))
        return original_take(blocks, parts, found)

    monkeypatch.setattr(iis_module, "time_merged", merged)
    monkeypatch.setattr(candidates_module, "_take_all", take)
    _assert_same(source, rules=[HIGH_PORT])
    reads = events.count("read")
    assert reads > 20
    halfway = [i for i, event in enumerate(events) if event == "read"][reads // 2]
    assert events[:halfway].count("taken") >= reads // 4  # blocks were freed on the way


# Times as Python's isoformat() and str() write them, and other forms parse_datetime reads or refuses.
TIME_FORMS = [
    "2026-11-26T05:00:{s:02d}+00:00",
    "2026-11-26 05:00:{s:02d}+00:00",
    "2026-11-26T06:00:{s:02d}+01:00",
    "2026-11-26T00:30:{s:02d}-04:30",
    "2026-11-26T05:00:{s:02d}.250000+00:00",
    "2026-11-26T05:00:{s:02d}",
    "2026-11-26T05:00:{s:02d}.1234567Z",
    "20261126T0500{s:02d}Z",
    "2026-11-26T05:00:{s:02d}z",
    "2026-11-26X05:00:{s:02d}Z",
    "2026-11-26T05:00:{s:02d}+24:00",
    "2026-11-26T05:00:{s:02d} ",
]


@pytest.mark.parametrize("form", TIME_FORMS)
def test_times_in_other_iso_forms_are_typed_as_the_plain_read_types_them(
    tmp_path: Path, plain_blocks: list[int], form: str
) -> None:
    """A day written with offsets (what Python's isoformat() writes) or a space for the T: typed in the
    columnar pass by the plain code's own parse_datetime, once per distinct value, with the same
    results, rows read and skipped lines as the plain read; a form parse_datetime refuses leaves the
    block to the plain code, which skips those lines."""
    rows = [{**_scan_line(i, 1000 + i), "TimeGenerated": form.format(s=i)} for i in range(31)]
    rows += [_scan_line(i, 80) for i in range(5)]  # canonical times in the same block
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert fast == plain
    readable = sum(plain[2].values()) == 0
    assert bool(plain_blocks) != readable  # the plain code only for a form it skips
    if readable:
        assert plain[0] and plain[1] == 36


def test_a_time_written_as_a_number_is_refused_as_the_plain_read_refuses_it(tmp_path: Path) -> None:
    """20261126 as a JSON number: parse_datetime would read its text as a date; the plain code refuses
    a number, and so does the columnar pass."""
    rows = [{**_scan_line(i, 1000 + i), "TimeGenerated": f"2026-11-26T05:00:{i:02d}+00:00"} for i in range(30)]
    rows.append({**_scan_line(0, 9), "TimeGenerated": 20261126})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert plain[0] and sum(plain[2].values()) == 1
    assert fast == plain


def test_an_integer_too_long_for_python_is_a_skipped_line_in_both_reads(tmp_path: Path) -> None:
    """json.loads refuses a JSON integer of more than 4,300 digits (polars refuses a few hundred, so the
    block is read row by row): the line is skipped and counted by both reads, and no traceback."""
    rows = [_scan_line(i, 1000 + i) for i in range(31)]
    lines = [json.dumps(r) for r in rows]
    lines[7] = lines[7][:-1] + ', "TimeTaken": ' + "9" * 4301 + "}"
    lines[8] = lines[8][:-1] + ', "csUriQuery": "' + "9" * 5000 + '", "TimeTaken": ' + "9" * 4300 + "}"  # both fine
    lines.append(json.dumps(_scan_line(40, 80, "192.0.2.1"))[:-1] + ', "TimeTaken": ' + "9" * 4400 + "}")  # no candidate
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert plain[0] and plain[1] == 30 and sum(plain[2].values()) == 2
    assert fast == plain


@pytest.mark.parametrize(("depth", "read"), [(985, True), (2000, False)])
def test_a_deeply_nested_value_is_read_or_skipped_alike_whatever_the_stack(tmp_path: Path, depth: int, read: bool) -> None:
    """json's scanner counts nesting against the recursion limit from the caller's stack depth: a line
    nested 985 deep parsed in one read and not when candidate rows were taken, from deeper down (a lost
    finding). Every read now parses it (or skips it, much deeper) alike."""
    rows = [json.dumps(_scan_line(i, 1000 + i)) for i in range(30)]
    rows[4] = rows[4][:-1] + ', "csCookie": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert fast == plain
    assert bool(plain[0]) == read and sum(plain[2].values()) == int(not read)


def test_a_value_in_a_skipped_lines_warning_cannot_forge_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A time holding a line break and an ANSI escape is quoted escaped in the warning that skips it."""
    rows = [json.dumps(_scan_line(i, 1000 + i)) for i in range(3)]
    rows.append(json.dumps({**_scan_line(5, 9), "TimeGenerated": "x\nWARNING forged\x1b[31m"}))
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        plain, fast = _stats_and_results(path, HIGH_PORT)
    assert fast == plain and sum(plain[2].values()) == 1
    messages = [r.getMessage() for r in caplog.records if "skipped malformed line" in r.getMessage()]
    assert messages and all("\n" not in m and "\x1b" not in m for m in messages)
    assert "x\\nWARNING forged\\x1b[31m" in messages[0]


def test_json_lines_after_blank_lines_take_the_fast_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leading blank lines (CRLF ones too) no longer send the whole file to the plain read."""
    columnar = _spy_found(monkeypatch, jsonl_module, "_columnar_keys")
    odd = _spy_found(monkeypatch, jsonl_module, "_odd_lines")
    monkeypatch.setattr(jsonl_module, "BLOCK_BYTES", 400)
    rows = [json.dumps(_scan_line(i, 1000 + i)) for i in range(40)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n\r\n  \n" + "\n".join(rows) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert fast == plain and plain[0] and plain[1] == 40
    # The first block, mostly blank lines, is read row by row (the odd-lines path gives it up); the others columnar.
    assert odd == [False] and len(columnar) > 1 and all(columnar)


@pytest.mark.parametrize("small_run_bytes", [16 << 10, 300, 1 << 20])
def test_iis_layouts_switching_every_few_entries_cost_one_frame_per_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_run_bytes: int
) -> None:
    """A server switching between two #Fields layouts every 1 to 5 entries: the runs of each layout are
    read as one polars frame per block (a frame per run cost ~5 ms, 15x the plain path; the runs typed
    by the plain code instead cost the held-out IIS day 10 s), or, when a layout's runs are too few for
    a frame, typed by the plain code, all of a block's as one RowsBlock; every rule's results are the
    plain read's."""
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(iis_module, "SMALL_RUN_BYTES", small_run_bytes)
    made: list[int] = []
    original = candidates_module.RowsBlock.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(candidates_module.RowsBlock, "__init__", counted)
    frames = _spy_found(monkeypatch, iis_module, "_columnar_keys")
    rng = _rng(7)
    rows = sorted(_random_rows(rng, 2000) + _scans(rng) + _logon_bursts(rng), key=lambda r: r["TimeGenerated"])
    lines = ["#Software: Microsoft Internet Information Services 10.0", "#Version: 1.0"]
    fields, left = IIS_FIELDS_A, 0
    for row in rows:
        if left == 0:
            fields, left = (IIS_FIELDS_B if fields == IIS_FIELDS_A else IIS_FIELDS_A), rng.randint(1, 5)
            lines += ["#Date: 2026-11-26 00:00:00", f"#Fields: {fields}"]
        lines.append(_iis_line(row, fields))
        left -= 1
    folder = tmp_path / "W3SVC1"
    folder.mkdir()
    (folder / "u_ex261126.log").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    compared = _assert_same(IisLogSource(tmp_path, "web01"))
    assert compared.pruned()
    assert len(compared.fired()) >= 2  # layout B has no user name: the by-user rule may not fire
    if small_run_bytes < 1 << 20:  # each layout's ~150 KB of runs in a frame of its own, in each fast read
        assert not made and len(frames) == 2 * len(RULES) and all(frames)
    else:  # both layouts' runs too few for a frame: one block of small runs per fast read (the plain read makes none)
        assert len(made) == len(RULES) and not frames


@pytest.mark.parametrize(
    ("port", "columnar"),
    [
        ("-1", True),  # a JSON number
        ('" 8080"', True),
        ('"+81"', True),
        ('"-0042"', True),
        ("8.1e1", True),  # a whole float: 81 to both
        ('"0000000000000000000081"', True),
        ("1.5", False),
        ('"0x1f"', False),
        ("true", False),
        ('"1_000"', False),
        ("9223372036854775808", False),
        ('{"p": 1}', False),
    ],
)
def test_ports_written_oddly_are_typed_as_the_plain_read_types_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    plain_blocks: list[int],
    odd_lines: list[list[int]],
    port: str,
    columnar: bool,
) -> None:
    """A port the plain code reads (a sign, spaces, leading zeros) keeps its block columnar, typed by tolong
    once per distinct value; one it refuses leaves its line (only) to the plain code, which skips it."""
    monkeypatch.setattr(jsonl_module, "BLOCK_BYTES", 1 << 20)
    lines = [json.dumps(_scan_line(i, 1000 + i)) for i in range(29)]
    lines.append(json.dumps(_scan_line(29, 0)).replace('"sPort": 0', f'"sPort": {port}'))  # the 30th port
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain, fast = _stats_and_results(path, HIGH_PORT)
    assert fast == plain
    assert not plain_blocks
    assert odd_lines == ([] if columnar else [[29]])  # that line alone
    assert bool(plain[0]) == columnar and sum(plain[2].values()) == int(not columnar)
