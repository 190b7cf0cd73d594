"""The W3CIISLog table: column types, and turning loosely typed input rows into typed rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from detector.errors import InputError
from detector.kql import parse_datetime, tolong
from detector.models import Row

TABLE = "W3CIISLog"

# Types from the table reference (learn.microsoft.com/azure/azure-monitor/reference/tables/w3ciislog).
# The status columns are strings, not ints.
COLUMN_TYPES: dict[str, str] = {
    "TimeGenerated": "datetime",
    "cIP": "string",
    "sIP": "string",
    "sPort": "int",
    "sSiteName": "string",
    "Computer": "string",
    "sComputerName": "string",
    "csMethod": "string",
    "csUriStem": "string",
    "csUriQuery": "string",
    "csUserName": "string",
    "csUserAgent": "string",
    "csReferer": "string",
    "csCookie": "string",
    "csHost": "string",
    "csVersion": "string",
    "scStatus": "string",
    "scSubStatus": "string",
    "scWin32Status": "string",
    "scBytes": "long",
    "csBytes": "long",
    "TimeTaken": "long",
}


def coerce_value(column: str, value: Any, where: str) -> Any:
    """Convert one input value to the column's KQL type, as Log Analytics would store it.

    Strings: null/absent is "" (KQL strings have no null); numbers become their text.
    int/long: null, "" and "-" are null; integers and integer strings are kept; anything else is an error.
    datetime: ISO 8601 text or a datetime; required.
    """
    kind = COLUMN_TYPES.get(column, "string")
    if kind == "string":
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        raise InputError(where, f"column {column} must be a string, got {type(value).__name__}")
    if kind in ("int", "long"):
        if value is None or value in ("", "-"):
            return None
        number = tolong(value)
        if number is None or (isinstance(value, float) and not value.is_integer()):
            raise InputError(where, f"column {column} must be an integer or null, got {value!r}")
        return number
    if value is None:
        raise InputError(where, f"{column} is null or missing; every row needs a timestamp")
    if isinstance(value, datetime):
        return value if value.tzinfo else parse_datetime(value.isoformat())
    if not isinstance(value, str):
        raise InputError(where, f"column {column} must be an ISO 8601 datetime string, got {value!r}")
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise InputError(where, f"column {column}: {exc}") from None


def coerce_row(raw: Mapping[str, Any], columns: Iterable[str], required: Iterable[str], where: str) -> Row:
    """Typed row holding `columns` from a raw mapping; a missing `required` column is an InputError."""
    for column in required:
        if column not in raw:
            raise InputError(where, f"missing required column '{column}'; W3CIISLog rows need {', '.join(required)}")
    row: Row = {}
    for column in columns:
        row[column] = coerce_value(column, raw.get(column), where)
    return row
