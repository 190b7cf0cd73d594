"""The pushdown description: its three translations agree with KQL, and every source applies it exactly.

Python (`matches`) is checked against KQL itself (duckdb-kql runs the `kql_admits` text); the polars and
Python `admits` translations may only widen (keep more rows), never drop a matching row. Then specs of
every shape (a filter with a count, a distinct count over the whole window, a non-monotonic threshold,
an opaque part) are run through every source: the rule's result over what the source returns must be
its result over every row of the window.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb_kql
import pytest
from duckdb_kql import engine as kql_engine
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detector.config import LogAnalyticsSettings
from detector.kql import bin_datetime
from detector.logic import (
    And,
    CandidateSpec,
    Compare,
    Count,
    DistinctCount,
    InSet,
    Not,
    Opaque,
    Or,
    Predicate,
    StartsWith,
    StringSize,
    Term,
    Threshold,
    column,
)
from detector.models import Row, Window
from detector.pushdown import Capabilities
from detector.sources import ReadRequest, Source
from detector.sources.file import FileSource
from detector.sources.iis import IisLogSource
from detector.sources.kql_query import candidates_query
from detector.sources.loganalytics import LogAnalyticsSource, RequestPacer
from tests.fakes import tls
from tests.fakes.loganalytics import LogAnalyticsFake, serve_log_analytics, string_size_emulated
from tests.fakes.server import FakeServer

DAY = datetime(2026, 11, 26, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))
WS = "11111111-2222-3333-4444-555555555555"
FAILED_LOGONS = column("scStatus").in_("401", "403") & column("csUserName").ne("-")
COLUMNS = (
    "TimeGenerated",
    "cIP",
    "Computer",
    "sIP",
    "sPort",
    "csUserName",
    "scStatus",
    "csUserAgent",
    "csUriQuery",
)
REQUIRED = ("TimeGenerated", "cIP", "Computer", "sIP", "sPort")


# -- the description itself ---------------------------------------------------------------------------


def test_the_failed_logon_filter_reads_as_the_rule_writes_it() -> None:
    assert FAILED_LOGONS.kql_admits() == '(scStatus in ("401", "403") and csUserName != "-")'
    assert (~FAILED_LOGONS).kql_admits() == '(scStatus !in ("401", "403") or csUserName == "-")'
    spec = CandidateSpec(
        filter=FAILED_LOGONS, keys=("cIP", "Computer", "sIP"), time_bin=timedelta(minutes=1), threshold=Threshold(">=", 20)
    )
    assert spec.prunes
    assert spec.columns() == ("TimeGenerated", "cIP", "Computer", "sIP", "csUserName", "scStatus")
    assert spec.describe() == (
        'where (scStatus in ("401", "403") and csUserName != "-") | count() by bin(TimeGenerated, 1m), cIP, Computer, sIP | >= 20'
    )
    query = candidates_query("W3CIISLog", DAY, DAY + timedelta(days=1), spec)
    assert '| where (scStatus in ("401", "403") and csUserName != "-")' in query
    assert "| where rows >= 20" in query


def test_only_monotonic_thresholds_with_a_pushable_measure_prune() -> None:
    def spec(op: Any, measure: Any = None) -> CandidateSpec:
        return CandidateSpec(keys=("cIP",), measure=measure or Count(), threshold=Threshold(op, 5))

    assert spec(">=").prunes and spec(">").prunes
    assert Threshold(">", 5).minimum == 6
    assert not any(spec(op).prunes for op in ("<", "<=", "==", "!="))
    assert not spec(">=", Opaque("a ratio of two counts")).prunes
    assert not CandidateSpec(keys=("cIP",)).prunes
    plan = spec("<").plan(Capabilities())
    assert not plan.prune
    assert any("not monotonic" in reason for reason in plan.reasons)
    assert not spec(">=", DistinctCount("sPort")).plan(Capabilities(distinct_count=False)).prune


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: column("nope"), "not a W3CIISLog column"),
        (lambda: column("sPort").eq("80"), "integer column"),
        (lambda: column("scStatus").eq(401), "string column"),
        (lambda: column("sPort").eq_ci("80"), "integer column"),
        (lambda: column("sPort").startswith("8"), "string column"),
        (lambda: column("cIP").in_(), "empty"),
        (lambda: CandidateSpec(keys=("cIP", "cIP")), "repeat"),
        (lambda: CandidateSpec(time_bin=timedelta(0)), "positive"),
        (lambda: Threshold("~", 1), "unknown threshold"),  # type: ignore[arg-type]  # the operator no type admits, on purpose
    ],
)
def test_a_bad_description_is_refused_saying_why(build: Any, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_an_opaque_part_widens_the_filter_under_any_negation() -> None:
    opaque = Opaque("the rule's own regex", reads=("csUriQuery",))
    status = column("scStatus").eq("401")
    assert (status & opaque).kql_admits() == 'scStatus == "401"'
    assert (status | opaque).kql_admits() is None
    assert Not(status & opaque).kql_admits() is None  # not(a and ?) = not a or ?: anything may pass
    assert Not(status | opaque).kql_admits() == 'scStatus != "401"'
    assert not (status & opaque).pushable()
    assert "csUriQuery" in CandidateSpec(filter=status & opaque).columns()
    with pytest.raises(TypeError, match="rule's own code"):
        (status & opaque).matches({"scStatus": "401"})


# -- three translations, one meaning --------------------------------------------------------------------

STRINGS = [
    "",
    "-",
    "401",
    "403",
    "200",
    "alice",
    "ALICE",
    "Alice",
    "mailboxid=1",
    "MailboxId=2",
    "é",
    "É",
    'a"b',
    "x\ty",
    "a=1&/MAPI/nspi",
    "Protocol=x&b",
    "xprotocol",
    "/autodiscover/autodiscover.json",
    "4010 x-401",
]
NEEDLES = ["", "401", "mapi", "/mapi/", "protocol", "Protocol=", "/autodiscover/", "a b", "=", "é", "x-4"]
_CON = duckdb_kql.connect()
_CON.sql('CREATE TABLE T ("scStatus" VARCHAR, "csUserName" VARCHAR, "csUriQuery" VARCHAR, "sPort" INTEGER, "n" INTEGER)')


def _leaves() -> st.SearchStrategy[Predicate]:
    text_column = st.sampled_from(["scStatus", "csUserName", "csUriQuery"])
    text = st.sampled_from(STRINGS)
    ports = st.sampled_from([80, 443, 8080])
    return st.one_of(
        st.builds(Compare, text_column, st.sampled_from(["==", "!=", "=~", "!~"]), text),
        st.builds(Compare, st.just("sPort"), st.sampled_from(["==", "!="]), ports),
        st.builds(
            InSet, text_column, st.sampled_from(["in", "!in", "in~", "!in~"]), st.lists(text, min_size=1, max_size=3).map(tuple)
        ),
        st.builds(InSet, st.just("sPort"), st.sampled_from(["in", "!in"]), st.lists(ports, min_size=1, max_size=2).map(tuple)),
        st.builds(StartsWith, text_column, st.sampled_from(["", "a", "MAIL", "4", "é", "-"]), st.booleans(), st.booleans()),
        st.builds(StringSize, text_column, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.integers(0, 16)),
        st.builds(
            Term,
            text_column,
            st.sampled_from(["has", "!has", "hasprefix", "!hasprefix", "contains", "!contains"]),
            st.sampled_from(NEEDLES),
        ),
    )


def _predicates(leaves: st.SearchStrategy[Predicate]) -> st.SearchStrategy[Predicate]:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda ps: And(tuple(ps))),
            st.lists(inner, min_size=1, max_size=3).map(lambda ps: Or(tuple(ps))),
            inner.map(Not),
        ),
        max_leaves=6,
    )


ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "scStatus": st.sampled_from(STRINGS),
            "csUserName": st.sampled_from(STRINGS),
            "csUriQuery": st.sampled_from(STRINGS),
            "sPort": st.sampled_from([None, 80, 443, 8080]),
        }
    ),
    min_size=1,
    max_size=8,
)


def _kql_keeps(text: str | None, rows: list[dict[str, Any]]) -> list[bool]:
    _CON.sql("DELETE FROM T")
    for n, row in enumerate(rows):
        _CON.execute(
            "INSERT INTO T VALUES (?, ?, ?, ?, ?)", [row["scStatus"], row["csUserName"], row["csUriQuery"], row["sPort"], n]
        )
    if text is None:
        return [True] * len(rows)
    text, sizes = string_size_emulated(text)
    _CON.sql(f"CREATE OR REPLACE VIEW V AS SELECT *{sizes} FROM T")
    sql = str(duckdb_kql.to_sql(f"V | where {text} | project n", schema=kql_engine.schema(_CON)))
    kept = {n for (n,) in _CON.sql(sql).fetchall()}
    return [i in kept for i in range(len(rows))]


def _polars_keeps(predicate: Predicate, rows: list[dict[str, Any]]) -> list[bool]:
    import polars as pl

    frame = pl.DataFrame(
        rows, schema={"scStatus": pl.String, "csUserName": pl.String, "csUriQuery": pl.String, "sPort": pl.Int64}
    )
    return frame.with_columns(predicate.polars_admits().alias("keep"))["keep"].to_list()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_predicates(_leaves()), ROWS)
@example(  # found by hypothesis in CI: a non-ASCII needle on an all-ASCII row
    Not(Term("scStatus", "!has", "\u00e9")), [{"scStatus": "", "csUserName": "", "csUriQuery": "", "sPort": None}]
)
def test_python_matches_kql_and_polars_only_widens_on_non_ascii(predicate: Predicate, rows: list[dict[str, Any]]) -> None:
    expected = [predicate.matches(row) for row in rows]
    assert _kql_keeps(predicate.kql_admits(), rows) == expected
    assert [predicate.admits(row) for row in rows] == expected
    # polars may keep more where case folding leaves ASCII: a non-ASCII value, or a non-ASCII term needle
    # (the Kelvin sign folds to "k", so such a needle can match an ASCII value).
    ascii_needles = all(node.needle.isascii() for node in predicate.walk() if isinstance(node, Term))
    for row, keep, match in zip(rows, _polars_keeps(predicate, rows), expected, strict=True):
        if ascii_needles and all(str(v).isascii() for v in row.values()):
            assert keep == match
        else:
            assert keep or not match  # may keep more, never less


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _predicates(st.one_of(_leaves(), st.just(Opaque("the rule decides")))),
    ROWS,
    st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_with_opaque_parts_every_translation_keeps_a_superset(
    predicate: Predicate, rows: list[dict[str, Any]], decided: list[bool]
) -> None:
    """Whatever the rule's own condition decides for a row, no translation drops a row that could match."""

    def truth(node: Predicate, row: dict[str, Any], index: int) -> bool:
        if isinstance(node, Opaque):
            return decided[index]
        if isinstance(node, And):
            return all(truth(p, row, index) for p in node.parts)
        if isinstance(node, Or):
            return any(truth(p, row, index) for p in node.parts)
        if isinstance(node, Not):
            return not truth(node.part, row, index)
        return node.matches(row)

    real = [truth(predicate, row, i) for i, row in enumerate(rows)]
    for kept in (_kql_keeps(predicate.kql_admits(), rows), [predicate.admits(r) for r in rows], _polars_keeps(predicate, rows)):
        assert all(k or not r for k, r in zip(kept, real, strict=True))


# -- every source applies every shape of description exactly ---------------------------------------------


def _failed_logon(row: Row) -> bool:
    return row["scStatus"] in ("401", "403") and row["csUserName"] != "-"


# Each description with the rule's own row condition (what its evaluate() would apply).
SPECS: dict[str, tuple[CandidateSpec, Callable[[Row], bool]]] = {
    "failed logons per minute": (
        CandidateSpec(
            filter=FAILED_LOGONS, keys=("cIP", "Computer", "sIP"), time_bin=timedelta(minutes=1), threshold=Threshold(">=", 4)
        ),
        _failed_logon,
    ),
    "failed logons by user per 10m": (
        CandidateSpec(
            filter=FAILED_LOGONS,
            keys=("csUserName", "Computer", "sIP"),
            time_bin=timedelta(minutes=10),
            threshold=Threshold(">", 6),
        ),
        _failed_logon,
    ),
    "distinct ports over the window": (
        CandidateSpec(keys=("cIP",), measure=DistinctCount("sPort"), threshold=Threshold(">=", 12)),
        lambda row: True,
    ),
    "distinct user names per client and hour": (  # a DistinctCount of strings: kept beside its cell
        CandidateSpec(
            keys=("cIP",), time_bin=timedelta(hours=1), measure=DistinctCount("csUserName"), threshold=Threshold(">=", 4)
        ),
        lambda row: True,
    ),
    "few requests (not monotonic)": (
        CandidateSpec(filter=column("csUserAgent").startswith("curl"), keys=("cIP", "sIP"), threshold=Threshold("<", 3)),
        lambda row: row["csUserAgent"].lower().startswith("curl"),
    ),
    "case-insensitive and opaque": (
        CandidateSpec(
            filter=column("csUserName").eq_ci("ALICE") & Opaque("the rule's regex", reads=("csUriQuery",)),
            keys=("cIP",),
            time_bin=timedelta(hours=1),
            threshold=Threshold(">=", 3),
        ),
        lambda row: row["csUserName"].lower() == "alice" and "q=1" in row["csUriQuery"],
    ),
}


def _reference(spec: CandidateSpec, own_filter: Callable[[Row], bool], rows: list[Row]) -> dict[tuple[Any, ...], int]:
    """What a rule with this description finds: groups of matching rows whose measure meets the threshold."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        if not WINDOW.contains(row["TimeGenerated"]) or not own_filter(row):
            continue
        start = bin_datetime(row["TimeGenerated"], spec.time_bin) if spec.time_bin else WINDOW.start
        key = (start, *(row[k] for k in spec.keys))
        groups.setdefault(key, []).append(row[spec.measure.column] if isinstance(spec.measure, DistinctCount) else 1)
    out = {}
    for key, values in groups.items():
        measured = len({v for v in values if v is not None}) if isinstance(spec.measure, DistinctCount) else len(values)
        assert spec.threshold is not None
        if spec.threshold.holds(measured):
            out[key] = measured
    return out


def _day(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    clients = [f"198.51.100.{i}" for i in range(6)] + ["2001:db8::1"]
    rows = []
    for _ in range(2500):
        moment = DAY + timedelta(seconds=rng.randrange(-300, 86400 + 300))
        if rng.random() < 0.3:  # bursts, so groups reach the thresholds
            moment = DAY + timedelta(hours=rng.choice([3, 9, 17]), seconds=rng.randrange(90))
        rows.append(
            {
                "TimeGenerated": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "cIP": rng.choice(clients),
                "Computer": "web01",
                "sIP": rng.choice(["10.0.0.4", "10.0.0.5"]),
                "sPort": rng.choice([None, *range(1, 30)]),
                "csUserName": rng.choice(["-", "alice", "ALICE", "bob", "Ålice"]),
                "scStatus": rng.choice(["200", "401", "403", "401"]),
                "csUserAgent": rng.choice(["curl/8.1", "Curl/7", "Mozilla/5.0", "-"]),
                "csUriQuery": rng.choice(["-", "q=1", "x=q=1&y", "z"]),
            }
        )
    for second in range(2):  # a quiet client: a group below every threshold, so pruning has work to do
        quiet = {**rows[second], "cIP": "192.0.2.99", "TimeGenerated": f"2026-11-26T12:00:0{second}Z", "csUserAgent": "curl/8"}
        rows.append(quiet)
    if seed % 2:
        rng.shuffle(rows)
    else:
        rows.sort(key=lambda r: r["TimeGenerated"])
    return rows


def _iis_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["#Software: Microsoft Internet Information Services 10.0", "#Version: 1.0"]
    fields = "date time s-ip cs-uri-query s-port cs-username c-ip cs(User-Agent) sc-status"
    for index, row in enumerate(sorted(rows, key=lambda r: r["TimeGenerated"])):
        if index % 400 == 0:
            lines.append(f"#Fields: {fields}")
        stamp = row["TimeGenerated"]
        port = "-" if row["sPort"] is None else str(row["sPort"])
        values = [stamp[:10], stamp[11:19], row["sIP"], row["csUriQuery"], port, row["csUserName"], row["cIP"]]
        values += [row["csUserAgent"].replace(" ", "+"), row["scStatus"]]
        lines.append(" ".join(values))
    return lines


def _read(source: Source, spec: CandidateSpec | None) -> list[Row]:
    return list(source.read(ReadRequest(WINDOW, COLUMNS, REQUIRED, spec)))


def _sources(tmp_path: Path, rows: list[dict[str, Any]]) -> Iterator[tuple[str, Source]]:
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    folder = tmp_path / "logs" / "W3SVC1"
    folder.mkdir(parents=True)
    (folder / "u_ex261126.log").write_text("\r\n".join(_iis_lines(rows)) + "\r\n", encoding="utf-8")
    yield "jsonl", FileSource(jsonl)
    yield "array", FileSource(array)
    yield "iis", IisLogSource(tmp_path / "logs", "web01")


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seed", [1, 2])
def test_every_file_source_applies_the_description_exactly(
    tmp_path: Path, name: str, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detector.sources.file as file_module
    import detector.sources.iis as iis_module

    monkeypatch.setattr(file_module, "BLOCK_BYTES", 8192)  # many blocks, so bins are finished on the way
    monkeypatch.setattr(iis_module, "BLOCK_BYTES", 8192)
    columnar: list[bool] = []
    for module in (file_module, iis_module):
        original = module._columnar_keys

        def spy(*args: Any, original: Any = original) -> Any:
            keys = original(*args)
            columnar.append(keys is not None)
            return keys

        monkeypatch.setattr(module, "_columnar_keys", spy)
    spec, own_filter = SPECS[name]
    rows = _day(seed)
    for label, source in _sources(tmp_path, rows):
        everything = _read(source, None)
        pushed = _read(source, spec)
        expected = _reference(spec, own_filter, everything)
        assert expected, f"{label}: the test data must make {name} fire"
        assert _reference(spec, own_filter, pushed) == expected, label
        assert source.read_stats()["rowsRead"] == len(everything), label
        if spec.filter is not None and spec.filter.pushable():
            assert all(spec.filter.matches(row) for row in pushed), label  # filtered where the rows are read
        if spec.prunes and label != "array":
            assert len(pushed) < len(everything), label
    assert columnar.count(True) > columnar.count(False)  # the first passes ran columnar, mostly


@pytest.fixture
def workspace_source(azure_env: FakeServer, pki: tls.TestPki, tmp_path: Path) -> Iterator[tuple[LogAnalyticsFake, Any]]:
    fake = LogAnalyticsFake(WS)
    rows = _day(1)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    fake.load_jsonl(path)
    with serve_log_analytics(pki, fake) as server:

        def make(mode: str) -> LogAnalyticsSource:
            settings = LogAnalyticsSettings(endpoint=server.url, client_id="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", mode=mode)
            pacer = RequestPacer(200, 30.0, sleep=lambda _: None)
            return LogAnalyticsSource(WS, settings, pacer=pacer, sleep=lambda _: None)

        yield fake, make


@pytest.mark.parametrize("name", list(SPECS))
def test_log_analytics_pushes_the_description_server_side(workspace_source: tuple[LogAnalyticsFake, Any], name: str) -> None:
    fake, make = workspace_source
    spec, own_filter = SPECS[name]
    everything = _read(make("raw"), None)
    expected = _reference(spec, own_filter, everything)
    assert expected
    for mode in ("two-step", "raw"):
        fake.requests.clear()
        source = make(mode)
        pushed = _read(source, spec)
        assert _reference(spec, own_filter, pushed) == expected, mode
        assert source.read_stats()["rowsRead"] == len(everything), mode
        queries = [r.query for r in fake.requests]
        admits = spec.filter.kql_admits() if spec.filter is not None else None
        if admits:
            assert all(admits in q for q in queries if "project" in q), mode  # server-side filter
            assert len(pushed) < len(everything), mode
        if mode == "two-step" and spec.prunes:
            assert any("| summarize" in q and ">= " in q for q in queries)  # groups pruned server-side
