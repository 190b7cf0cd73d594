"""`file:<path>`: W3CIISLog rows as JSON Lines, a JSON array, or a saved Log Analytics query response.

The format is recognised by content. JSON Lines is streamed line by line (memory does not grow with
the file); the two whole-document formats are parsed at once. When the rule offers a CandidateSpec, a
JSON Lines file is read in two passes (jsonl_candidates.py) and only rows of groups that can fire are
returned; the rule's results are the same.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from detector.errors import InputError
from detector.logic import CandidateSpec
from detector.models import Row, Window
from detector.sources import ReadRequest, Source, files_changed_after, register_source
from detector.w3ciislog import COLUMN_TYPES, coerce_row


def typed_json_line(line: str, number: int, request: ReadRequest, where: str) -> Row | None:
    """One JSON Lines line as a typed row (None for a blank line); errors name file:line."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{where}:{number}", f"not valid JSON ({exc.msg}, column {exc.colno}); each line must be one JSON object"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(f"{where}:{number}", "each line must be a JSON object of W3CIISLog columns")
    return coerce_row(raw, request.columns, request.required, f"{where}:{number}")


class FileSource(Source):
    """Rows from one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"file:{self.path}"

    def late_bins(self, window: Window, ingested_after: datetime, time_bin: timedelta) -> set[datetime] | None:
        # Files carry no ingestion time: if any changed since, every bin of the window is re-checked.
        return None if files_changed_after([self.path], ingested_after) else set()

    def read(self, request: ReadRequest) -> Iterator[Row]:
        spec = request.candidates
        if spec is not None and _pushdown_applies(spec) and self._is_json_lines():
            from detector.sources.jsonl_candidates import Unavailable, read_candidate_rows

            try:
                candidate_rows = read_candidate_rows(self.path, request, spec)
            except Unavailable:
                pass  # the plain path below gives the same result, only slower
            else:
                yield from candidate_rows
                return
        for row in self._rows(request):
            if request.window.contains(row["TimeGenerated"]):
                yield row

    def _is_json_lines(self) -> bool:
        """True when the first line is one JSON object that is not a Log Analytics response."""
        try:
            with self.path.open("r", encoding="utf-8-sig") as handle:
                first_line = handle.readline()
        except (OSError, UnicodeDecodeError):
            return False  # the plain path reports it
        try:
            head = json.loads(first_line)
        except json.JSONDecodeError:
            return False
        return isinstance(head, dict) and "tables" not in head

    def _rows(self, request: ReadRequest) -> Iterator[Row]:
        where = str(self.path)
        try:
            handle = self.path.open("r", encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(where, f"cannot open ({exc.strerror}); check the path after 'file:'") from None
        with handle:
            first_line = handle.readline()
            first = first_line.lstrip()[:1]
            if not first:
                if handle.read().strip():
                    # Leading blank line: whatever follows decides the format.
                    handle.seek(0)
                    yield from self._jsonl(handle, request, where)
                return
            if first == "[":
                handle.seek(0)
                yield from self._array(self._load_document(handle, where), request, where)
                return
            if first != "{":
                raise InputError(f"{where}:1", "is not JSON Lines, a JSON array or a Log Analytics response")
            try:
                head = json.loads(first_line)
            except json.JSONDecodeError:
                head = None
            if isinstance(head, dict) and "tables" in head:
                yield from self._la_response(head, request, where)
                return
            if head is None:
                # Not one object per line: maybe a pretty-printed Log Analytics response.
                handle.seek(0)
                try:
                    document = json.load(handle)
                except json.JSONDecodeError:
                    document = None
                if isinstance(document, dict) and "tables" in document:
                    yield from self._la_response(document, request, where)
                    return
            handle.seek(0)
            yield from self._jsonl(handle, request, where)

    @staticmethod
    def _load_document(handle: Any, where: str) -> Any:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}:{exc.lineno}", f"not valid JSON ({exc.msg}, column {exc.colno})") from None

    @staticmethod
    def _jsonl(handle: Any, request: ReadRequest, where: str) -> Iterator[Row]:
        for number, line in enumerate(handle, start=1):
            row = typed_json_line(line, number, request, where)
            if row is not None:
                yield row

    @staticmethod
    def _array(document: Any, request: ReadRequest, where: str) -> Iterator[Row]:
        if not isinstance(document, list):
            raise InputError(where, "a JSON array of W3CIISLog rows was expected")
        for index, raw in enumerate(document):
            if not isinstance(raw, dict):
                raise InputError(f"{where}: row {index}", "must be a JSON object of W3CIISLog columns")
            yield coerce_row(raw, request.columns, request.required, f"{where}: row {index}")

    @staticmethod
    def _la_response(document: Mapping[str, Any], request: ReadRequest, where: str) -> Iterator[Row]:
        if document.get("error"):
            error = document["error"]
            code = error.get("code") if isinstance(error, dict) else error
            raise InputError(where, f"the saved response carries an error ({code}); its rows may be incomplete")
        tables = document.get("tables")
        if not isinstance(tables, list) or not tables:
            raise InputError(where, "a Log Analytics response needs a non-empty 'tables' list")
        table = next((t for t in tables if isinstance(t, dict) and t.get("name") == "PrimaryResult"), tables[0])
        try:
            names = [c["name"] for c in table["columns"]]
            rows = table["rows"]
        except (KeyError, TypeError):
            raise InputError(where, "each table needs 'columns' (with 'name') and 'rows'") from None
        missing = [c for c in request.required if c not in names]
        if missing:
            raise InputError(
                where, f"missing required column(s) {', '.join(missing)}; W3CIISLog rows need {', '.join(request.required)}"
            )
        for index, values in enumerate(rows):
            if not isinstance(values, list) or len(values) != len(names):
                raise InputError(f"{where}: row {index}", f"must be a list of {len(names)} values")
            yield coerce_row(dict(zip(names, values, strict=True)), request.columns, request.required, f"{where}: row {index}")


def _pushdown_applies(spec: CandidateSpec) -> bool:
    """The two-pass read handles string keys and an integer distinct column, when polars is installed."""
    if any(COLUMN_TYPES.get(key) != "string" for key in spec.keys) or COLUMN_TYPES.get(spec.distinct_column) not in (
        "int",
        "long",
    ):
        return False
    return importlib.util.find_spec("polars") is not None


@register_source("file")
def _open(argument: str, settings: object, computer: str) -> Source:
    return FileSource(Path(argument))
