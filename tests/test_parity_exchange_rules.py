"""The three Exchange and user-agent rules (rules/): their files, their examples, and parity with an independent KQL engine.

Each rule's own query text, from its YAML file, runs through duckdb-kql over the same rows as the Python
logic (the fixture of tests/files/generate_exchange.py, and every inline example), and every output
column is compared. duckdb-kql lacks three things these queries use; each is emulated narrowly, and only
that:
- `string_size(csUserAgent)` reads a column precomputed with detector.kql_terms.string_size;
- `ipv4_is_private(cIP)` reads a column precomputed with detector.kql_terms.ipv4_is_private (null for
  what is not IPv4, so `== False` still drops it on duckdb-kql's side);
- `project-reorder a, b, ...` becomes `project a, b, ..., <every other column in table order>`, which is
  what the operator's documentation says it does (project-reorder-operator.md).
Both kql_terms functions are unit-tested against the docs in test_kql_terms.py. `has`, `has_any`,
`hasprefix`, `contains`, `startswith`, `in~`, `=~`, `matches regex` (DuckDB's RE2), `split`, `indexof`,
`substring`, `min`, `max` and `count` are duckdb-kql's own. The window becomes a `where` on
TimeGenerated (Sentinel applies it as the query's time range); `ago(14d)` and `ago(1d)` become the
window's bounds, the reading documented in detector/logic/silk_typhoon.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb_kql
import pyarrow as pa
import pytest
import yaml

from detector.kql import format_datetime, parse_datetime
from detector.kql_terms import ipv4_is_private, string_size
from detector.logic.anomalous_user_agent import AnomalousUserAgent
from detector.logic.proxyshell import ProxyShell
from detector.logic.silk_typhoon import REORDERED_FIRST, TABLE_COLUMNS, SilkTyphoon
from detector.models import Row, Window
from detector.rules import DEFAULT_RULES_DIR, load_rules
from detector.w3ciislog import coerce_row
from tests.helpers import FILES

END = parse_datetime("2026-11-27T00:00:00Z")
ARROW_TYPES = {
    "TimeGenerated": pa.timestamp("us", tz="UTC"),
    "sPort": pa.int32(),
    "scBytes": pa.int64(),
    "csBytes": pa.int64(),
    "TimeTaken": pa.int64(),
    "csUserAgent_size_": pa.int64(),
    "cIP_is_private_": pa.bool_(),
}
SQL_TYPES = {"TimeGenerated": "TIMESTAMPTZ", "sPort": "INTEGER", "scBytes": "BIGINT", "csBytes": "BIGINT", "TimeTaken": "BIGINT"}


@dataclass(frozen=True)
class PendingRule:
    """A rule: its file, parsed YAML, Python logic and how its query is adapted for duckdb-kql."""

    file: str
    logic_class: Any
    columns: tuple[str, ...]
    period: timedelta
    rewrite: Callable[[str, Window], str]

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((DEFAULT_RULES_DIR / self.file).read_text(encoding="utf-8"))
        return loaded

    def logic(self) -> Any:
        return self.logic_class.from_parameters(self.data["parameters"])


def _window_filter(window: Window) -> str:
    return (
        f"TimeGenerated >= datetime({format_datetime(window.start)}) and TimeGenerated < datetime({format_datetime(window.end)})"
    )


def _rewrite_windowed(query: str, window: Window) -> str:
    query = query.replace("string_size(csUserAgent)", "csUserAgent_size_")
    query = query.replace("ipv4_is_private(cIP)", "cIP_is_private_")
    return query.replace("W3CIISLog\n", f"W3CIISLog\n| where {_window_filter(window)}\n", 1)


def _rewrite_silk_typhoon(query: str, window: Window) -> str:
    reorder = "| project-reorder " + ", ".join(REORDERED_FIRST)
    assert reorder in query
    rest = [c for c in TABLE_COLUMNS if c not in REORDERED_FIRST]
    query = query.replace(reorder, "| project " + ", ".join((*REORDERED_FIRST, *rest)))
    for span in ("14d", "1d"):
        since = Window(max(window.start, window.end - timedelta(days=int(span[:-1]))), window.end)
        query = query.replace(f"TimeGenerated > ago({span})", _window_filter(since))
    assert "ago(" not in query
    return query


RULES = {
    "anomalous_user_agent": PendingRule(
        "anomalous_user_agent_connection.yaml", AnomalousUserAgent, TABLE_COLUMNS, timedelta(days=1), _rewrite_windowed
    ),
    "proxyshell": PendingRule(
        "proxyshell_autodiscover_ssrf.yaml", ProxyShell, TABLE_COLUMNS, timedelta(hours=12), _rewrite_windowed
    ),
    "silk_typhoon": PendingRule(
        "silk_typhoon_suspicious_exchange_request.yaml", SilkTyphoon, TABLE_COLUMNS, timedelta(days=14), _rewrite_silk_typhoon
    ),
}
RULE_IDS = {
    "anomalous_user_agent": "f845881e-2500-44dc-8ed7-b372af3e1e25",
    "proxyshell": "968358d6-6af8-49bb-aaa4-187b3067fb95",
    "silk_typhoon": "23005e87-2d3a-482b-b03d-edbebd1ae151",
}


def kql_results(rule: PendingRule, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
    """The rule's own query, adapted as the module docstring says, run by duckdb-kql over `rows`."""
    connection = duckdb_kql.connect()
    declared = ", ".join(f"{c} {SQL_TYPES.get(c, 'VARCHAR')}" for c in TABLE_COLUMNS)
    connection.sql(f"CREATE TABLE W3CIISLog ({declared}, csUserAgent_size_ BIGINT, cIP_is_private_ BOOLEAN)")
    rows = list(rows)
    columns = {c: [r[c] for r in rows] for c in TABLE_COLUMNS}
    columns["csUserAgent_size_"] = [string_size(r["csUserAgent"]) for r in rows]
    columns["cIP_is_private_"] = [ipv4_is_private(r["cIP"]) for r in rows]
    staged = pa.table({c: pa.array(v, type=ARROW_TYPES.get(c, pa.string())) for c, v in columns.items()})
    connection.register("staged", staged)
    connection.sql("INSERT INTO W3CIISLog SELECT * FROM staged")
    result = duckdb_kql.kql(connection, rule.rewrite(rule.data["query"], window))
    return [dict(zip(result.columns, row, strict=True)) for row in result.fetchall()]


def _utc(value: Any) -> Any:
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def assert_same_results(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    """Same rows (as a multiset: KQL leaves the order undefined), same columns in the same order."""
    for row in theirs:
        assert list(row) == list(ours[0]), "same output columns, same order"

    def canonical(row: Mapping[str, Any]) -> str:
        return json.dumps({k: _utc(v) for k, v in row.items()}, default=str, sort_keys=False)

    assert sorted(map(canonical, ours)) == sorted(map(canonical, theirs))


def fixture_rows() -> list[Row]:
    path = FILES / "exchange_w3ciislog.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [coerce_row(json.loads(line), TABLE_COLUMNS, ("TimeGenerated",), f"{path}:{i}") for i, line in enumerate(lines, 1)]


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return fixture_rows()


def test_the_engine_loads_the_three_rules_with_their_windows() -> None:
    loaded = {r.id: r for r in load_rules(DEFAULT_RULES_DIR)}
    assert set(RULE_IDS.values()) <= set(loaded)
    for name, rule_id in RULE_IDS.items():
        rule = loaded[rule_id]
        assert rule.logic.whole_window, name
        assert rule.logic.time_bin == rule.query_frequency, name  # windows are whole queryFrequency steps
        assert rule.query_period == RULES[name].period, name


@pytest.mark.parametrize("name", sorted(RULES))
def test_sentinel_fields_are_kept(name: str) -> None:
    data = RULES[name].data
    assert data["id"] == RULE_IDS[name]
    assert data["kind"] == "Scheduled"
    assert data["requiredDataConnectors"] == [{"connectorId": "AzureMonitor(IIS)", "dataTypes": ["W3CIISLog"]}]
    assert data["tactics"] == ["InitialAccess"]
    assert data["relevantTechniques"] == ["T1190"]
    assert (data["triggerOperator"], data["triggerThreshold"]) == ("gt", 0)
    logic = RULES[name].logic()
    output = _output_columns(name)
    for mapping in data["entityMappings"]:
        for field in mapping["fieldMappings"]:
            assert field["columnName"] in output, (name, field)
    del logic


def _output_columns(name: str) -> tuple[str, ...]:
    module = {"anomalous_user_agent": "anomalous_user_agent", "proxyshell": "proxyshell", "silk_typhoon": "silk_typhoon"}[name]
    imported = __import__(f"detector.logic.{module}", fromlist=["OUTPUT_COLUMNS"])
    columns: tuple[str, ...] = imported.OUTPUT_COLUMNS
    return columns


@pytest.mark.parametrize("name", sorted(RULES))
def test_fixture_results_match_the_oracle_and_the_kql_engine(name: str, rows: list[Row]) -> None:
    rule = RULES[name]
    window = Window(END - rule.period, END)
    ours = rule.logic().evaluate(rows, window)
    assert list(ours[0]) == list(_output_columns(name))
    assert_same_results(ours, kql_results(rule, rows, window))
    oracle = json.loads((FILES / "exchange_expected.json").read_text(encoding="utf-8"))[name]
    reported = {
        "anomalous_user_agent": lambda r: [r["cIP"], r["csUserAgent"], r["ConnectionCount"]],
        "proxyshell": lambda r: [r["cIP"], r["csUriQuery"]],
        "silk_typhoon": lambda r: [r["Computer"], r["csUriQuery"]],
    }[name]
    assert sorted(map(reported, ours), key=str) == sorted(oracle, key=str)


@pytest.mark.parametrize("name", sorted(RULES))
def test_results_do_not_depend_on_row_order(name: str, rows: list[Row]) -> None:
    rule = RULES[name]
    window = Window(END - rule.period, END)
    logic = rule.logic()
    assert logic.evaluate(list(reversed(rows)), window) == logic.evaluate(rows, window)


def _expand(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An example row's `repeat: N` and `each: {column: values}`, the shorthand the engine's examples use."""
    base = {k: v for k, v in raw.items() if k not in ("repeat", "each")}
    each = raw.get("each", {})
    combos = itertools.product(*each.values()) if each else [()]
    return [{**base, **dict(zip(each, combo, strict=True))} for combo in combos for _ in range(raw.get("repeat", 1))]


def _comparable(value: Any) -> Any:
    return format_datetime(value) if isinstance(value, datetime) else value


EXAMPLES = [(name, i) for name, rule in sorted(RULES.items()) for i in range(len(rule.data["examples"]))]


@pytest.mark.parametrize(("name", "index"), EXAMPLES)
def test_inline_example_behaves_as_it_says_in_both_engines(name: str, index: int) -> None:
    rule = RULES[name]
    example = rule.data["examples"][index]
    window = Window(parse_datetime(example["window"]["start"]), parse_datetime(example["window"]["end"]))
    where = f"{rule.file}: examples[{index}]"
    rows = [
        coerce_row(expanded, TABLE_COLUMNS, ("TimeGenerated",), where) for raw in example["rows"] for expanded in _expand(raw)
    ]
    ours = rule.logic().evaluate(rows, window)
    assert bool(ours) is example["fires"], where
    expected = example.get("expect", [])
    if expected:
        assert len(ours) == len(expected), where
    for got, want in zip(ours, expected, strict=False):
        assert {k: _comparable(got[k]) for k in want} == want, where
    if ours:
        assert list(ours[0]) == list(_output_columns(name))
    assert_same_results(ours, kql_results(rule, rows, window))


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_example_row_column_is_a_table_column(name: str) -> None:
    for example in RULES[name].data["examples"]:
        for raw in example["rows"]:
            assert set(raw) - {"repeat", "each"} <= set(TABLE_COLUMNS), (name, example["name"])


@pytest.mark.parametrize(
    ("name", "parameters", "message"),
    [
        ("anomalous_user_agent", {"shortUaLength": 0}, "shortUaLength must be a positive integer"),
        ("anomalous_user_agent", {"shortUaLength": 1000, "longUaLength": 5}, "must be less than longUaLength"),
        ("proxyshell", {"successCodes": ["200"]}, "successCodes must be a non-empty list"),
        ("silk_typhoon", {"requestPeriod": "15d"}, "requestPeriod must not be longer"),
        ("silk_typhoon", {"serverLookback": "two weeks"}, "serverLookback: 'two weeks' is not a timespan"),
        ("silk_typhoon", {"exchangeSiteName": ""}, "exchangeSiteName must be a non-empty string"),
    ],
)
def test_bad_parameters_are_one_clear_error(name: str, parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RULES[name].logic_class.from_parameters(parameters)


def test_row_level_ids_name_the_request_and_whole_window_ids_name_the_window(rows: list[Row]) -> None:
    """Identities the engine will derive finding ids from (docs/rule-engine-notes.md)."""
    proxyshell, silk = RULES["proxyshell"].logic(), RULES["silk_typhoon"].logic()
    day, earlier = Window(END - timedelta(hours=12), END), Window(END - timedelta(hours=13), END)
    # A request seen by two different windows (say, a catch-up and a re-check) has one identity.
    keys = {proxyshell.finding_key(r, day) for r in proxyshell.evaluate(rows, day)}
    assert keys == {
        proxyshell.finding_key(r, earlier) for r in proxyshell.evaluate(rows, earlier) if r["TimeGenerated"] >= day.start
    }
    assert len(keys) == len(proxyshell.evaluate(rows, day))
    two_weeks = Window(END - timedelta(days=14), END)
    assert len({silk.finding_key(r, two_weeks) for r in silk.evaluate(rows, two_weeks)}) == len(silk.evaluate(rows, two_weeks))
    agents = RULES["anomalous_user_agent"].logic()
    today, yesterday = Window(END - timedelta(days=1), END), Window(END - timedelta(days=2), END - timedelta(days=1))
    result = agents.evaluate(rows, today)[0]
    assert agents.finding_key(result, today) != agents.finding_key(result, yesterday)


def test_fixture_is_what_the_generator_writes(tmp_path: Path) -> None:
    """The committed fixture is reproducible from its seeded generator."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_exchange", FILES / "generate_exchange.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setattr(module, "HERE", tmp_path)  # noqa: B010 - the generator writes next to HERE; a module built at run time
    module.main()
    for name in ("exchange_w3ciislog.jsonl", "exchange_expected.json"):
        assert (tmp_path / name).read_bytes() == (FILES / name).read_bytes(), name
