"""Fake Azure Monitor Logs Ingestion API (api-version 2023-01-01), for the real LogsIngestionClient.

POST /dataCollectionRules/{dcrImmutableId}/streams/{stream}?api-version=2023-01-01, JSON array body,
usually gzip (Content-Encoding: gzip). Answers 204 when accepted (kql-and-sentinel.md §5.a).

Enforced like the service: a Bearer token for https://monitor.azure.com; the DCR immutable id and the
stream (404 / 400 otherwise); the 1 MB call limit, on the compressed and on the uncompressed body (413;
the fake reads "1 MB" as 1 MiB, the SDK's own chunk size, unless `max_bytes` says otherwise); `throttle`
429s with Retry-After; `forbidden` gives 403.
Stricter than the service, on purpose: every row must match the stream declaration (known columns, JSON
types that fit the declared type; datetimes ISO 8601). The service silently drops unknown columns and
nulls mistyped values; the fake answers 400 so a test sees the drift.

State (`FakeServer.state`, `JsonHandler.state`): streams {dcr id: {stream: {column: type}}}, rows (accepted), calls (one per POST:
compressed/uncompressed sizes, row count, status).
"""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.arm import token_audience
from tests.fakes.server import JsonHandler

API_VERSION = "2023-01-01"
AUDIENCE = "https://monitor.azure.com"
ONE_MB = 1024 * 1024


def stream_columns(schema_path: Path) -> dict[str, dict[str, str]]:
    """{stream: {column: type}} from a findings-columns.json document (the DCR stream declarations)."""
    document = json.loads(schema_path.read_text(encoding="utf-8"))
    return {
        stream: {column["name"]: column["type"] for column in declaration["columns"]}
        for stream, declaration in document["streamDeclarations"].items()
    }


def _type_problem(value: Any, declared: str) -> str | None:
    if value is None:
        return None
    if declared == "string":
        ok = isinstance(value, str)
    elif declared in ("int", "long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif declared == "real":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif declared == "boolean":
        ok = isinstance(value, bool)
    elif declared == "dynamic":
        ok = isinstance(value, list | dict)
    elif declared == "datetime":
        try:
            ok = isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
        except ValueError:
            ok = False
    else:
        return f"undeclarable type {declared}"
    return None if ok else f"{type(value).__name__} {value!r:.60} does not fit {declared}"


def row_problems(row: Any, columns: dict[str, str]) -> list[str]:
    """Why a row does not match the stream declaration (empty when it does)."""
    if not isinstance(row, dict):
        return ["a row is not a JSON object"]
    problems = [f"unknown column {name}" for name in row if name not in columns]
    for name, value in row.items():
        if name in columns and (problem := _type_problem(value, columns[name])):
            problems.append(f"{name}: {problem}")
    return problems


class IngestionHandler(JsonHandler):
    """The Logs Ingestion endpoint of one DCR (or DCE)."""

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.send_json(
            status, {"error": {"code": code, "message": message}}, {"x-ms-request-id": str(uuid.uuid4()), **(headers or {})}
        )

    def do_POST(self) -> None:
        state: dict[str, Any] = self.state
        state.setdefault("rows", [])
        calls: list[dict[str, Any]] = state.setdefault("calls", [])
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding", "").lower() == "gzip" else raw
        call = {"compressed": len(raw), "uncompressed": len(body), "gzip": raw[:2] == b"\x1f\x8b", "rows": None}
        calls.append(call)

        def fail(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            call["status"] = status
            self._error(status, code, message, headers)

        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if token_audience(self.headers.get("Authorization", "")) != AUDIENCE:
            fail(401, "InvalidAuthenticationToken", "Audience validation failed.")
            return
        if state.get("throttle", 0) > 0:
            state["throttle"] -= 1
            fail(429, "TooManyRequests", "Rate limit exceeded.", {"Retry-After": str(state.get("retry_after", "1"))})
            return
        if state.get("forbidden"):
            fail(
                403,
                "OperationFailed",
                "The authentication token provided does not have access to ingest data for the data collection rule.",
            )
            return
        if parse_qs(url.query).get("api-version") != [API_VERSION]:
            fail(400, "InvalidApiVersion", f"Unsupported api-version in '{url.query}'.")
            return
        if len(parts) != 4 or parts[0] != "dataCollectionRules" or parts[2] != "streams":
            fail(404, "NotFound", "Unknown path.")
            return
        streams = state["streams"].get(parts[1])
        if streams is None:
            fail(404, "NotFound", f"Data collection rule with immutable Id '{parts[1]}' not found.")
            return
        columns = streams.get(parts[3])
        if columns is None:
            fail(400, "InvalidStream", f"Stream '{parts[3]}' is not declared in the data collection rule.")
            return
        limit = int(state.get("max_bytes", ONE_MB))
        if len(raw) > limit or len(body) > limit:
            fail(
                413,
                "ContentLengthLimitExceeded",
                f"Maximum allowed content length: {limit} bytes. Provided content length: {len(body)} bytes.",
            )
            return
        try:
            rows = json.loads(body)
        except ValueError:
            fail(400, "InvalidPayload", "The body is not JSON.")
            return
        if not isinstance(rows, list):
            fail(400, "InvalidPayload", "The body must be a JSON array.")
            return
        problems = [p for row in rows for p in row_problems(row, columns)]
        if problems:
            fail(400, "InvalidPayload", "; ".join(problems[:5]))
            return
        call.update(rows=len(rows), status=204)
        state["rows"].extend(rows)
        self.send_json(204, None)
