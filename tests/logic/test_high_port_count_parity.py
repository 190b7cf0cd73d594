"""Parity with an independent KQL engine: the rule's own query, run by duckdb-kql over the fixture rows.

duckdb-kql (a KQL-to-DuckDB translator) runs the original v1.0.2 query text with only these narrow
rewrites, each for a function it lacks: `tohex(tolong(scWin32Status))` and `url_decode(csUriQuery)` read
columns precomputed with our kql.tohex/tolong/url_decode (those are unit-tested in test_kql.py);
deprecated `makeset(x)` / `arraylength(x)` become `make_set(x, 128)` / `array_length(x)`; the `let`
values are inlined; the window becomes a `where` on TimeGenerated (Sentinel applies it as the query's
time range). duckdb-kql does not enforce make_set's cap, so sets of more than 128 values are compared
as "ours is 128 of theirs".

One adaptation on its side of the comparison: duckdb-kql's make_set keeps "" as a member, where
Kusto's reference emulators (and so we) skip "" like a null. Its string sets are compared with ""
removed (a no-op for set_sPort, whose values are ints); nothing else of its output is changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import duckdb_kql

from detector.evaluate import evaluate
from detector.kql import format_datetime, tohex, tolong, url_decode
from detector.sources import ReadRequest, open_source
from tests.helpers import DAY, FILES, RULE

COLUMNS = RULE.logic.columns  # the rule's columns, as its sources read them; the first five are required


def rewritten_query() -> str:
    query = RULE.query
    query = query.replace("tohex(tolong(scWin32Status))", "scWin32Status_Hex_")
    query = query.replace("url_decode(csUriQuery)", "decodedUriQuery_")
    query = re.sub(r"\bmakeset\((\w+)\)", r"make_set(\1, 128)", query)
    query = query.replace("arraylength(", "array_length(")
    query = query.replace("let timeBin = 10m;\nlet portThreshold = 30;\n", "")
    query = query.replace("timeBin", "10m").replace("portThreshold", "30")
    window = (
        f"| where TimeGenerated >= datetime({format_datetime(DAY.start)}) "
        f"and TimeGenerated < datetime({format_datetime(DAY.end)})\n"
    )
    return query.replace("W3CIISLog\n", "W3CIISLog\n" + window, 1)


def kql_results() -> list[dict[str, Any]]:
    connection = duckdb_kql.connect()
    connection.sql(
        "CREATE TABLE W3CIISLog (TimeGenerated TIMESTAMPTZ, cIP VARCHAR, Computer VARCHAR, sIP VARCHAR, sPort INTEGER, "
        "csUriQuery VARCHAR, csUserName VARCHAR, sSiteName VARCHAR, csUserAgent VARCHAR, csMethod VARCHAR, "
        "scStatus VARCHAR, scSubStatus VARCHAR, scWin32Status VARCHAR, scWin32Status_Hex_ VARCHAR, decodedUriQuery_ VARCHAR)"
    )
    # All rows of the file, not just the window: the query's own filter must do the windowing.
    everything = ReadRequest(type(DAY)(DAY.start.replace(year=2000), DAY.end.replace(year=2100)), COLUMNS, COLUMNS[:5])
    rows = list(open_source(f"file:{FILES / 'w3ciislog.jsonl'}").read(everything))
    connection.executemany(
        "INSERT INTO W3CIISLog VALUES (" + ",".join("?" * 15) + ")",
        [[r[c] for c in COLUMNS] + [tohex(tolong(r["scWin32Status"])), url_decode(r["csUriQuery"])] for r in rows],
    )
    result = duckdb_kql.kql(connection, rewritten_query())
    names = result.columns
    return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def test_same_groups_counts_and_sets_as_the_kql_engine() -> None:
    theirs = kql_results()
    rows = list(
        open_source(f"file:{FILES / 'w3ciislog.jsonl'}").read(ReadRequest(DAY, RULE.logic.columns, RULE.logic.required_columns))
    )
    ours = [f.columns for f in evaluate(RULE, rows, DAY)]
    assert len(ours) == len(theirs) > 0

    def key(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
        moment = row["TimeGenerated"]
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
        return (format_datetime(moment), row["cIP"], row["Computer"], row["sIP"])

    theirs_by_key = {key(r): r for r in theirs}
    empty_members_dropped = 0
    assert set(theirs_by_key) == {key(r) for r in ours}
    for mine in ours:
        other = theirs_by_key[key(mine)]
        assert list(mine) == list(other), "same 18 output columns in the same order"
        assert mine["ConnectionsCount"] == other["ConnectionsCount"]
        assert mine["portCount"] == min(other["portCount"], 128)
        for column in (c for c in mine if c.startswith("set_")):
            their_set = other[column]
            their_values = their_set if isinstance(their_set, list) else json.loads(their_set)
            empty_members_dropped += their_values.count("")
            their_values = [v for v in their_values if v != ""]  # make_set skips "" (see the module docstring)
            if len(their_values) <= 128:
                assert sorted(mine[column], key=str) == sorted(their_values, key=str), column
            else:
                assert len(mine[column]) == 128
                assert set(mine[column]) <= set(their_values), column
    assert empty_members_dropped > 0, "the fixtures have empty fields, so the adaptation above is exercised"
    # order by portCount desc
    assert [r["portCount"] for r in ours] == sorted((r["portCount"] for r in ours), reverse=True)
