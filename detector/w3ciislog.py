"""The W3CIISLog table: column types, and turning loosely typed input rows into typed rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from detector.errors import InputError
from detector.kql import parse_datetime, strcat, tohex, tolong, url_decode
from detector.models import Row

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
    # Added by Azure Monitor, not logged by IIS: the machine's Azure resource id and the log file's path.
    # Log Analytics carries them; IIS files do not, so they are "" there (as any absent string).
    "_ResourceId": "string",
    "FileUri": "string",
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


class ColumnError(InputError):
    """A row refused because of one column.

    `cause`: ("missing", column) for a required column it lacks, ("value", column) for a value the
    column's type cannot hold. A read of other columns, or one that requires fewer, might keep the row.
    """

    def __init__(self, where: str, problem: str, cause: tuple[str, str]) -> None:
        super().__init__(where, problem)
        self.cause = cause


def coerce_row(raw: Mapping[str, Any], columns: Iterable[str], required: Iterable[str], where: str) -> Row:
    """Typed row holding `columns` from a raw mapping.

    A missing `required` column, or a value that does not fit its column, is a ColumnError (an InputError).
    """
    for column in required:
        if column not in raw:
            problem = f"missing required column '{column}'; W3CIISLog rows need {', '.join(required)}"
            raise ColumnError(where, problem, ("missing", column))
    row: Row = {}
    get = raw.get
    for column in columns:
        value = get(column)
        # A string in a string column is kept as it is (most values of most rows): no call for it.
        if value.__class__ is str and COLUMN_TYPES.get(column, "string") == "string":
            row[column] = value
        else:
            try:
                row[column] = coerce_value(column, value, where)
            except InputError as exc:
                raise ColumnError(exc.where, exc.problem, ("value", column)) from None
    return row


# ---- Enrichments every Sentinel W3CIISLog rule computes ------------------------------------------
# The rules (44a555d8, 19e01883, 884c4957) share these steps verbatim: scStatusFull and its friendly
# text, the hex and friendly text of scWin32Status, and the decoded query string.

# case(scStatusFull == ...): == is case-sensitive.
STATUS_FRIENDLY: dict[str, str] = {
    "401.0": "Access denied.",
    "401.1": "Logon failed.",
    "401.2": "Logon failed due to server configuration.",
    "401.3": "Unauthorized due to ACL on resource.",
    "401.4": "Authorization failed by filter.",
    "401.5": "Authorization failed by ISAPI/CGI application.",
    "403.0": "Forbidden.",
    "403.4": "SSL required.",
}
STATUS_FRIENDLY_ELSE = "See - https://support.microsoft.com/help/943891/the-http-status-code-in-iis-7-0-iis-7-5-and-iis-8-0"

# case(scWin32Status_Hex =~ ...): =~ is case-insensitive, so keys are kept lower-case here. The rule
# writes "8009030C" in upper case; it matches tohex's lower-case output only because of =~.
WIN32_FRIENDLY: dict[str, str] = {
    "775": "The referenced account is currently locked out and cannot be logged on to.",
    "52e": "Logon failure: Unknown user name or bad password.",
    "532": "Logon failure: The specified account password has expired.",
    "533": "Logon failure: Account currently disabled.",
    "2ee2": "The request has timed out.",
    "0": "The operation completed successfully.",
    "1": "Incorrect function.",
    "2": "The system cannot find the file specified.",
    "3": "The system cannot find the path specified.",
    "4": "The system cannot open the file.",
    "5": "Access is denied.",
    "8009030e": "SEC_E_NO_CREDENTIALS",
    "8009030c": "SEC_E_LOGON_DENIED",
}
WIN32_FRIENDLY_ELSE = "See - https://msdn.microsoft.com/library/cc231199.aspx"


@lru_cache(maxsize=4096)
def status_full(sc_status: str, sc_substatus: str) -> tuple[str, str]:
    """(scStatusFull, scStatusFull_Friendly) for one status pair; cached: few distinct pairs exist."""
    full = strcat(sc_status, ".", sc_substatus)
    return full, STATUS_FRIENDLY.get(full, STATUS_FRIENDLY_ELSE)


@lru_cache(maxsize=4096)
def win32_status(sc_win32_status: str) -> tuple[str, str]:
    """(scWin32Status_Hex, scWin32Status_Friendly) for one raw scWin32Status value."""
    hex_value = tohex(tolong(sc_win32_status))
    return hex_value, WIN32_FRIENDLY.get(hex_value.lower(), WIN32_FRIENDLY_ELSE)


@lru_cache(maxsize=65536)
def decoded_query(cs_uri_query: str) -> str:
    """url_decode(csUriQuery), cached per distinct value."""
    return url_decode(cs_uri_query)
