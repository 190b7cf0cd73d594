"""Fake Log Analytics query API: `POST /v1/workspaces/{id}/query` over HTTPS, answering real KQL.

The fake runs the KQL it receives with duckdb-kql over fixture rows held in DuckDB, and answers in the
API's wire format ({"tables": [{"name": "PrimaryResult", "columns": [{"name", "type"}], "rows": [...]}]},
gzip when asked). Like the service it checks the bearer token's audience, reads `Prefer: wait=N`,
intersects the body's `timespan` with the query (inclusive at both ends, the cautious reading), cuts an
answer at a row or byte limit with a 200 + PartialError carrying the rows that fit, and records every
request. Tests script faults: 429 with Retry-After, 5xx, 204, a delay past the client's timeout, a
partial answer with or without its rows, a body cut short.

Emulated narrowly, because duckdb-kql 1.1.2 lacks them:
- `ingestion_time()`. Each row carries a hidden `_IngestionTime` column (TimeGenerated + 5 min unless a
  test sets it) and the query text's `ingestion_time()` is replaced by that column name before
  translation.
- `string_size(<column>)` of a column named in the query (`string_size_emulated`): replaced by a column
  the view adds, DuckDB's strlen (bytes of UTF-8, as KQL counts) of the column, "" when null.
Nothing else is rewritten.
Datetimes are written with 7 fractional digits when they have a fraction, as Kusto prints them.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb_kql
from duckdb_kql import engine as kql_engine

from detector.w3ciislog import COLUMN_TYPES
from tests.fakes.server import FakeServer, JsonHandler, serve
from tests.fakes.tls import TestPki

_DUCKDB_TYPES = {"datetime": "TIMESTAMPTZ", "string": "VARCHAR", "int": "INTEGER", "long": "BIGINT"}
_PATH = re.compile(r"^/v1/workspaces/([^/?]+)/query$")
_INGESTION_TIME = re.compile(r"\bingestion_time\(\s*\)")
INGESTION_COLUMN = "_IngestionTime"
_STRING_SIZE = re.compile(r"\bstring_size\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")


def string_size_emulated(query: str) -> tuple[str, str]:
    """The query with each `string_size(column)` read from a column `column__string_size`, and the SQL
    select list (", ..." or "") that adds those columns to a table's rows."""
    names = sorted(set(_STRING_SIZE.findall(query)))
    added = "".join(f', strlen(coalesce("{name}", \'\')) AS "{name}__string_size"' for name in names)
    return _STRING_SIZE.sub(lambda m: f"{m.group(1)}__string_size", query), added


DEFAULT_INGESTION_DELAY = timedelta(minutes=5)


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour.

    kind: "status" (answer `status` with an OneAPI error, and Retry-After when `retry_after` is set),
    "no_content" (204), "hang" (hold the answer until the client asks again, `seconds` at most, then
    answer normally), "slow_query" (a query that takes `seconds`: past the request's `Prefer: wait` it is
    the service's 504, at once, since waiting would only slow the test), "partial_without_data"
    (200 + PartialError and no tables), "partial_with_data" (200 + PartialError with every row of the
    answer, as when a part of the service failed after the rows were sent), "no_tables" (200 with an
    empty tables list), "cut_body" (send half of the body, then close the connection), "reshaped" (the
    answer to a query that projects `column`, with that column dropped when `change` is "drop", typed
    `change` otherwise ("string", "real"), or its first row one value short ("ragged") or long ("ragged+"):
    a service answering from a table of another schema; other queries are answered as usual).
    """

    kind: str
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    column: str = ""
    change: str = ""


@dataclass
class RequestRecord:
    """What one request asked and what it got."""

    workspace: str
    query: str
    timespan: str | None
    prefer: str
    status: int = 0
    rows: int = 0
    partial: bool = False
    wire_bytes: int = 0  # as sent: gzip-compressed when the client accepts it, as the service does
    body_bytes: int = 0  # the JSON before compression
    fault: str = ""


@dataclass
class LogAnalyticsFake:
    """The fake workspace: data, limits, scripted faults and a log of requests. Thread-safe."""

    workspace_id: str
    table: str = "W3CIISLog"
    max_rows: int = 500_000  # the service's record limit per answer
    max_bytes: int = 100 * 1024 * 1024  # the service's ~100 MiB of (uncompressed) data per answer
    audience: str = ""  # expected token audience; set to the server URL by serve_log_analytics
    requests: list[RequestRecord] = field(default_factory=list)
    _faults: deque[Fault] = field(default_factory=deque)
    _faults_at: dict[int, Fault] = field(default_factory=dict)
    _always: Fault | None = None

    def __post_init__(self) -> None:
        self.con = duckdb_kql.connect()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)  # notified on every request (a hung answer waits for the retry)
        self._base = f"fake_rows_{self.table}"
        columns = ", ".join(f'"{name}" {_DUCKDB_TYPES[kind]}' for name, kind in COLUMN_TYPES.items())
        self.con.sql(f'CREATE TABLE "{self._base}" ({columns}, "{INGESTION_COLUMN}" TIMESTAMPTZ)')

    # -- data ------------------------------------------------------------------------------------------

    def load_jsonl(self, path: Path) -> int:
        """Append W3CIISLog rows from a JSON Lines file; returns how many rows the table holds."""
        return self._load(f"read_json('{path}', format='newline_delimited', columns={self._json_columns()})")

    def load_parquet(self, path: Path) -> int:
        """Append rows from a Parquet file whose columns are W3CIISLog columns."""
        return self._load(f"read_parquet('{path}')")

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append rows given as dicts (tests with hand-made values)."""
        names = [*COLUMN_TYPES, INGESTION_COLUMN]
        values = [[row.get(name) for name in names] for row in rows]
        if values:
            marks = ", ".join("?" for _ in names)
            with self.lock:
                self.con.executemany(f'INSERT INTO "{self._base}" VALUES ({marks})', values)
                self._default_ingestion()
        return self.row_count()

    def set_ingestion_time(self, start: datetime, end: datetime, ingested: datetime) -> None:
        """Pretend rows with start <= TimeGenerated < end arrived at `ingested` (late data)."""
        with self.lock:
            self.con.execute(
                f'UPDATE "{self._base}" SET "{INGESTION_COLUMN}" = ? WHERE "TimeGenerated" >= ? AND "TimeGenerated" < ?',
                [ingested, start, end],
            )

    def row_count(self) -> int:
        with self.lock:
            found = self.con.execute(f'SELECT count(*) FROM "{self._base}"').fetchone()
        return int(found[0]) if found else 0

    def _json_columns(self) -> str:
        pairs = [f"'{name}': '{_DUCKDB_TYPES[kind]}'" for name, kind in COLUMN_TYPES.items()]
        return "{" + ", ".join(pairs) + "}"

    def _load(self, relation: str) -> int:
        with self.lock:
            self.con.sql(f'INSERT INTO "{self._base}" BY NAME SELECT * FROM {relation}')
            self._default_ingestion()
        return self.row_count()

    def _default_ingestion(self) -> None:
        minutes = int(DEFAULT_INGESTION_DELAY.total_seconds() // 60)
        self.con.sql(
            f'UPDATE "{self._base}" SET "{INGESTION_COLUMN}" = "TimeGenerated" + INTERVAL {minutes} MINUTE '
            f'WHERE "{INGESTION_COLUMN}" IS NULL'
        )

    # -- faults ----------------------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """The next requests meet these faults, one each, in order."""
        self._faults.extend(faults)

    def fail_at(self, number: int, fault: Fault) -> None:
        """Request number `number` (1-based, counting every request) meets this fault."""
        self._faults_at[number] = fault

    def fail_always(self, fault: Fault | None) -> None:
        """Every request meets this fault (None: stop)."""
        self._always = fault

    def next_fault(self, number: int) -> Fault | None:
        if number in self._faults_at:
            return self._faults_at.pop(number)
        if self._faults:
            return self._faults.popleft()
        return self._always

    # -- counters --------------------------------------------------------------------------------------

    @property
    def wire_bytes(self) -> int:
        return sum(r.wire_bytes for r in self.requests)

    @property
    def body_bytes(self) -> int:
        return sum(r.body_bytes for r in self.requests)

    def reset_counters(self) -> None:
        self.requests.clear()

    # -- answering -------------------------------------------------------------------------------------

    def run(self, query: str, timespan: str | None) -> tuple[list[dict[str, str]], list[list[Any]]]:
        """Columns and rows (as on the wire) of the query over the rows inside `timespan`; KQL errors raise."""
        columns, rows = self.run_json(query, timespan)
        return columns, [json.loads(row) for row in rows]

    def run_json(self, query: str, timespan: str | None) -> tuple[list[dict[str, str]], list[str]]:
        """Columns, and each row as the JSON text of its wire form. DuckDB writes the JSON (fast at 1M rows)."""
        bounds = _timespan_bounds(timespan)
        text, sizes = string_size_emulated(_INGESTION_TIME.sub(INGESTION_COLUMN, query))
        with self.lock:
            where = ""
            if bounds is not None:
                # Values we parsed ourselves, rendered by isoformat(): safe in SQL text (views take no parameters).
                first, last = (b.astimezone(UTC).isoformat() for b in bounds)
                where = f""" WHERE "TimeGenerated" >= TIMESTAMPTZ '{first}' AND "TimeGenerated" <= TIMESTAMPTZ '{last}'"""
            # A view of the main database, not a TEMP one: duckdb-kql resolves a table named inside `union`
            # or `let` through the schema, which gives bare names only to the current database's tables.
            self.con.execute(f'CREATE OR REPLACE VIEW "{self.table}" AS SELECT *{sizes} FROM "{self._base}"{where}')
            translated = str(duckdb_kql.to_sql(text, schema=kql_engine.schema(self.con)))
            self.con.execute("SET TimeZone = 'UTC'")
            shape = self.con.execute(f"SELECT * FROM ({translated}) LIMIT 0")
            names = [d[0] for d in shape.description or []]
            duck_types = [str(d[1]) for d in shape.description or []]
            kinds = [_kusto_type(t) for t in duck_types]
            values = ", ".join(_wire_sql(f"__r.{_quote(n)}", k, t) for n, k, t in zip(names, kinds, duck_types, strict=True))
            rows = (
                self.con.execute(f"SELECT json_array({values})::VARCHAR FROM ({translated}) AS __r").fetchall() if names else []
            )
        columns = [{"name": n, "type": k} for n, k in zip(names, kinds, strict=True)]
        return columns, [row[0] for row in rows]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _wire_sql(column: str, kind: str, duck_type: str) -> str:
    """SQL rendering one value as Log Analytics sends it."""
    if kind == "datetime":
        # Kusto prints 100 ns ticks: 7 fractional digits when there is a fraction (the SDK cuts them to 6).
        return (
            f"CASE WHEN {column} IS NULL THEN NULL WHEN epoch_us({column}) % 1000000 = 0 "
            f"THEN strftime({column}, '%Y-%m-%dT%H:%M:%SZ') ELSE strftime({column}, '%Y-%m-%dT%H:%M:%S.%f') || '0Z' END"
        )
    if kind == "dynamic":
        # Log Analytics sends dynamic values as JSON text, not nested JSON.
        if duck_type.upper() == "JSON":
            return f"CAST({column} AS VARCHAR)"
        return f"CAST(to_json({column}) AS VARCHAR)"
    if kind == "timespan":
        return f"CAST({column} AS VARCHAR)"
    return column


def _kusto_type(duck: str) -> str:
    duck = duck.upper()
    if duck.startswith("TIMESTAMP"):
        return "datetime"
    if duck in ("VARCHAR", "UUID"):
        return "string"
    if duck in ("INTEGER", "SMALLINT", "TINYINT"):
        return "int"
    if duck in ("BIGINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        return "long"
    if duck in ("DOUBLE", "FLOAT") or duck.startswith("DECIMAL"):
        return "real"
    if duck == "BOOLEAN":
        return "bool"
    if duck.startswith("INTERVAL"):
        return "timespan"
    return "dynamic"  # JSON, lists, structs, maps


def _parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", text)
    if not match:
        raise ValueError(f"unsupported duration {text!r}")
    return timedelta(seconds=float(match.group(1)))


def _timespan_bounds(timespan: str | None) -> tuple[datetime, datetime] | None:
    """[start, end] of an ISO 8601 interval as the SDK sends it; None for no timespan (all data)."""
    if not timespan:
        return None
    first, sep, second = timespan.partition("/")
    if not sep:
        end = datetime.now(UTC)
        return end - _parse_duration(first), end
    start = _parse_iso(first)
    if second.startswith("P"):
        return start, start + _parse_duration(second)
    return start, _parse_iso(second)


def _error(code: str, message: str, inner: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if inner:
        body["innererror"] = {"code": "SemanticError", "message": inner}
    return {"error": body}


_STATUS_CODES = {
    429: ("ThrottledError", "Too many requests; retry after the time in the Retry-After header"),
    500: ("InternalServerError", "Something went wrong on the server"),
    502: ("BadGateway", "Bad gateway"),
    503: ("ServiceUnavailableError", "The service is unavailable"),
    504: ("GatewayTimeout", "The query exceeded the server timeout (Prefer: wait)"),
}


def _partial_error(reason: str) -> dict[str, Any]:
    return {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {"code": "-2133196797", "message": reason, "severity": 2, "severityName": "Error"},
            }
        ],
    }


def _prefer_wait(prefer: str) -> float | None:
    """N of `Prefer: wait=N` (the service's default is 3 minutes)."""
    match = re.search(r"\bwait=(\d+)", prefer)
    return float(match.group(1)) if match else 180.0


def _token_problem(header: str, audience: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or token.count(".") != 2:
        return "a Bearer token is required"
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, json.JSONDecodeError):
        return "the token is not a JWT"
    if audience and claims.get("aud") != audience:
        return f"the token's audience {claims.get('aud')!r} is not {audience!r}"
    if int(claims.get("exp", 0)) < time.time():
        return "the token has expired"
    return ""


class LogAnalyticsHandler(JsonHandler):
    """The query endpoint."""

    def do_POST(self) -> None:
        fake: LogAnalyticsFake = self.state["fake"]
        body = self.read_body()
        match = _PATH.match(self.path)
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            request = {}
        record = RequestRecord(
            workspace=match.group(1) if match else "",
            query=str(request.get("query", "")),
            timespan=request.get("timespan"),
            prefer=self.headers.get("Prefer", ""),
        )
        with fake.arrived:
            fake.requests.append(record)
            number = len(fake.requests)
            fake.arrived.notify_all()
        if not match:
            self._answer(record, 404, _error("PathNotFoundError", f"no such path {self.path}"))
            return
        problem = _token_problem(self.headers.get("Authorization", ""), fake.audience)
        if problem:
            self._answer(record, 401, _error("InvalidTokenError", problem))
            return
        if record.workspace.lower() != fake.workspace_id.lower():
            self._answer(record, 404, _error("WorkspaceNotFoundError", f"workspace {record.workspace} not found"))
            return
        fault = fake.next_fault(number)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind == "hang":
                with fake.arrived:
                    fake.arrived.wait_for(lambda: len(fake.requests) > number, timeout=fault.seconds)
            elif fault.kind == "slow_query":
                wait = _prefer_wait(record.prefer)
                if wait is not None and fault.seconds > wait:
                    self._answer(record, 504, _error(*_STATUS_CODES[504]))
                    return
            elif self._fault(record, fault):
                return
        try:
            columns, rows = fake.run_json(record.query, record.timespan)
        except Exception as exc:  # any KQL failure is the service's 400
            self._answer(record, 400, _error("BadArgumentError", "The request had some invalid properties", str(exc)))
            return
        error: dict[str, Any] | None = None
        if len(rows) > fake.max_rows:
            rows = rows[: fake.max_rows]
            error = _partial_error(
                f"Query result set has exceeded the internal record count limit {fake.max_rows} records "
                "(E_QUERY_RESULT_SET_TOO_LARGE)."
            )
        data = _body(columns, rows, error)
        if len(data) > fake.max_bytes:
            rows = _rows_within(columns, rows, fake.max_bytes)
            error = _partial_error(
                f"Query result set has exceeded the internal data size limit {fake.max_bytes} bytes "
                "(E_QUERY_RESULT_SET_TOO_LARGE)."
            )
            data = _body(columns, rows, error)
        record.rows = len(rows)
        record.partial = error is not None
        self._send(record, 200, data)

    def _fault(self, record: RequestRecord, fault: Fault) -> bool:
        """Answer a fault; False when the request should go on normally."""
        if fault.kind == "status":
            code, message = _STATUS_CODES.get(fault.status, ("Error", f"HTTP {fault.status}"))
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._answer(record, fault.status, _error(code, message), headers)
        elif fault.kind == "no_content":
            self._send(record, 204, b"")
        elif fault.kind == "partial_without_data":
            record.partial = True
            self._answer(record, 200, {"error": _partial_error("The query was cancelled before any result was produced.")})
        elif fault.kind == "partial_with_data":
            columns, rows = self.state["fake"].run_json(record.query, record.timespan)
            record.rows, record.partial = len(rows), True
            self._send(record, 200, _body(columns, rows, _partial_error("A part of the query failed after its rows were sent.")))
        elif fault.kind == "reshaped":
            columns, rows = self.state["fake"].run_json(record.query, record.timespan)
            names = [c["name"] for c in columns]
            if fault.column not in names or "| project" not in record.query:
                return False
            at, table = names.index(fault.column), [json.loads(row) for row in rows]
            if fault.change == "drop":
                del columns[at]
                for row in table:
                    del row[at]
            elif fault.change == "ragged" and table:
                table[0] = table[0][:-1]
            elif fault.change == "ragged+" and table:
                table[0] = [*table[0], "one too many"]
            else:
                columns[at] = {"name": fault.column, "type": fault.change}
            record.rows = len(table)
            self._send(record, 200, _body(columns, [json.dumps(row) for row in table], None))
        elif fault.kind == "no_tables":
            self._answer(record, 200, {"tables": []})
        elif fault.kind == "cut_body":
            columns, rows = self.state["fake"].run_json(record.query, record.timespan)
            data = _body(columns, rows, None)
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            record.status, record.wire_bytes = 200, len(data) // 2
            self.close_connection = True
        else:
            raise ValueError(f"unknown fault {fault.kind}")
        return True

    def _answer(self, record: RequestRecord, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(record, status, json.dumps(payload).encode(), headers)

    def _send(self, record: RequestRecord, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        record.body_bytes = len(data)
        gzipped = bool(data) and "gzip" in self.headers.get("Accept-Encoding", "")
        if gzipped:
            data = gzip.compress(data, compresslevel=6)
        record.status, record.wire_bytes = status, len(data)
        try:
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if data:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            record.wire_bytes = 0  # the client gave up (its read timeout) before the answer


def _body(columns: list[dict[str, str]], rows: list[str], error: dict[str, Any] | None) -> bytes:
    """The response body, spliced from the rows' JSON texts."""
    head = json.dumps({"name": "PrimaryResult", "columns": columns})[:-1]
    text = '{"tables":[' + head + ',"rows":[' + ",".join(rows) + "]}]"
    if error is not None:
        text += ',"error":' + json.dumps(error)
    return (text + "}").encode()


def _rows_within(columns: list[dict[str, str]], rows: list[str], limit: int) -> list[str]:
    """The longest prefix of rows whose answer stays under `limit` bytes."""
    budget = limit - len(_body(columns, [], _partial_error("x" * 200)))
    kept = []
    for row in rows:
        budget -= len(row.encode()) + 1
        if budget < 0:
            break
        kept.append(row)
    return kept


@contextmanager
def serve_log_analytics(pki: TestPki, fake: LogAnalyticsFake) -> Iterator[FakeServer]:
    """Run the fake over HTTPS on 127.0.0.1; tokens must be for the server's own URL (the SDK's default audience)."""
    with serve(LogAnalyticsHandler, pki, fake=fake) as server:
        fake.audience = server.url
        yield server
