"""What Sentinel's two W3CIISLog failed-logon rules share (19e01883 by client IP, 884c4957 by user).

Both queries run, in this order:
  where scStatus in ("401","403") | where csUserName != "-"
  (the user rule then rewrites csUriQuery, see high_failed_logon_count_by_user.py)
  the shared IIS enrichments (detector/w3ciislog.py)
  summarize makeset(...) (deprecated makeset: at most 128 values each),
            FailedConnectionsCount = count() by bin(TimeGenerated, timeBin), <actor>, Computer, sIP
  where FailedConnectionsCount >= failedThreshold
  project <columns> | order by FailedConnectionsCount (descending) | extend <entity columns>

A rule module says which actor it groups by, which columns it projects (KQL names and order) and what
it extends; this module does the rest. The query also builds `set_csUriQuery`, which its own `project`
drops, so it is not computed here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self

from detector.kql import CappedSet, bin_datetime, format_timespan
from detector.logic import (
    CandidateSpec,
    Count,
    RuleLogic,
    Threshold,
    bin_parameter,
    check_parameters,
    positive_int_parameter,
)
from detector.models import Row, Window
from detector.pushdown import column as pushdown_column
from detector.w3ciislog import decoded_query, status_full, win32_status

# `scStatus in ("401","403")`: `in` is case-sensitive, exact equality on the string column.
FAILED_STATUSES = frozenset(("401", "403"))
# `csUserName != "-"`: IIS writes "-" when the request carried no user name.
NO_USER = "-"
# The same two `where`s as a pushdown filter (what sources apply where the rows are read).
FAILED_LOGON_FILTER = pushdown_column("scStatus").in_(*sorted(FAILED_STATUSES)) & pushdown_column("csUserName").ne(NO_USER)
COUNT_COLUMN = "FailedConnectionsCount"
# Derived columns a set may be built from, and the raw columns each needs.
_DERIVED_SOURCES: dict[str, tuple[str, ...]] = {
    "decodedUriQuery": ("csUriQuery",),
    "scStatusFull": ("scStatus", "scSubStatus"),
    "scStatusFull_Friendly": ("scStatus", "scSubStatus"),
    "scWin32Status_Hex": ("scWin32Status",),
    "scWin32Status_Friendly": ("scWin32Status",),
}
_GroupKey = tuple[datetime, str, str, str]


def is_failed_logon(row: Row) -> bool:
    """The rules' row filter: a 401 or 403 answer to a request that named a user (or named none as "")."""
    return row.get("scStatus") in FAILED_STATUSES and row.get("csUserName") != NO_USER


class FailedLogonCount(RuleLogic):
    """Count of failed logons per time bin by an actor (client IP or user name), Computer and sIP."""

    # The column that names who failed: "cIP" or "csUserName", and its label for people.
    actor: ClassVar[str]
    actor_label: ClassVar[str]
    # The set an analyst reads right after the count: (label, column), e.g. the user names a client tried.
    companions: ClassVar[tuple[str, str]]
    # The query's `project` list, in order: TimeGenerated, the group keys, set_<column> for each
    # makeset(<column>) kept, and FailedConnectionsCount.
    projection: ClassVar[tuple[str, ...]]
    # Columns the query's final `extend` adds after the projection, in order.
    extensions: ClassVar[tuple[str, ...]] = ()
    # Columns every input row must have: those the file sources promise (README, Sources). Any other
    # column may be absent, and an absent string column is "" as in KQL: an absent csUserName is not
    # "-" and passes the filter, an absent scStatus is not 401 or 403 and does not.
    required_columns: ClassVar[tuple[str, ...]] = ("TimeGenerated", "Computer", "sIP")

    def __init__(self, time_bin: timedelta, failed_threshold: int, max_set_size: int) -> None:
        self.time_bin = time_bin
        self.failed_threshold = failed_threshold
        self.max_set_size = max_set_size

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "projection"):
            return
        cls.output_columns = (*cls.projection, *cls.extensions)
        read = ("TimeGenerated", cls.actor, "Computer", "sIP", "scStatus", "csUserName")
        raw = [source for column in cls.set_columns() for source in _DERIVED_SOURCES.get(column, (column,))]
        cls.columns = tuple(dict.fromkeys((*cls.required_columns, *read, *raw)))

    @classmethod
    def set_columns(cls) -> tuple[str, ...]:
        """The columns whose makeset() the projection keeps, in projection order."""
        return tuple(name.removeprefix("set_") for name in cls.projection if name.startswith("set_"))

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> Self:
        check_parameters(parameters, {"timeBin", "failedThreshold", "maxSetSize"})
        time_bin = bin_parameter(parameters, "timeBin", "1m or 10m")
        threshold = positive_int_parameter(parameters, "failedThreshold")
        cap = positive_int_parameter(parameters, "maxSetSize", " (128 for the legacy makeset)")
        return cls(time_bin, threshold, cap)

    def candidate_spec(self) -> CandidateSpec:
        # where <failed logon> | summarize count() by bin(TimeGenerated, timeBin), <actor>, Computer, sIP
        # | where FailedConnectionsCount >= failedThreshold: a count over the filtered rows, monotonic.
        return CandidateSpec(
            filter=FAILED_LOGON_FILTER,
            keys=(self.actor, "Computer", "sIP"),
            time_bin=self.time_bin,
            measure=Count(),
            threshold=Threshold(">=", self.failed_threshold),
        )

    def uri_query(self, cs_uri_query: str) -> str:
        """csUriQuery as the query sees it after its own rewrites (none by default)."""
        return cs_uri_query

    @abstractmethod
    def extend(self, result: dict[str, Any]) -> None:
        """Add the query's final `extend` columns to one projected result row."""

    def _value_getters(self) -> list[tuple[str, Callable[[Row], Any]]]:
        """One getter per kept set: the raw column, or the enrichment it is derived from."""

        def text(column: str) -> Callable[[Row], Any]:
            return lambda row: row.get(column) or ""

        derived: dict[str, Callable[[Row], Any]] = {
            "decodedUriQuery": lambda row: decoded_query(self.uri_query(row.get("csUriQuery") or "")),
            "scStatusFull": lambda row: status_full(row.get("scStatus") or "", row.get("scSubStatus") or "")[0],
            "scStatusFull_Friendly": lambda row: status_full(row.get("scStatus") or "", row.get("scSubStatus") or "")[1],
            "scWin32Status_Hex": lambda row: win32_status(row.get("scWin32Status") or "")[0],
            "scWin32Status_Friendly": lambda row: win32_status(row.get("scWin32Status") or "")[1],
            "sPort": lambda row: row.get("sPort"),  # an int column: null stays null, and makeset skips it
        }
        return [(column, derived.get(column) or text(column)) for column in self.set_columns()]

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        getters = self._value_getters()
        cap, size, start, end, actor = self.max_set_size, self.time_bin, window.start, window.end, self.actor
        groups: dict[_GroupKey, tuple[list[CappedSet[Any]], list[int]]] = {}
        for row in rows:
            moment = row["TimeGenerated"]
            if not start <= moment < end or not is_failed_logon(row):
                continue
            key = (bin_datetime(moment, size), row.get(actor) or "", row.get("Computer") or "", row.get("sIP") or "")
            group = groups.get(key)
            if group is None:
                group = groups[key] = ([CappedSet(cap) for _ in getters], [0])
            sets, count = group
            count[0] += 1
            for values, (_, get) in zip(sets, getters, strict=True):
                values.add(get(row))

        results = []
        for (bin_start, who, computer, sip), (sets, count) in groups.items():
            if count[0] < self.failed_threshold:
                continue
            by_name: dict[str, Any] = {
                "TimeGenerated": bin_start,
                actor: who,
                "Computer": computer,
                "sIP": sip,
                COUNT_COLUMN: count[0],
            }
            for values, (column, _) in zip(sets, getters, strict=True):
                by_name[f"set_{column}"] = values.values()
            result = {name: by_name[name] for name in self.projection}
            self.extend(result)
            results.append(result)
        # `order by FailedConnectionsCount` is descending. KQL leaves ties unordered; we break them by the
        # group key so that output is reproducible.
        results.sort(key=lambda r: (-r[COUNT_COLUMN], r["TimeGenerated"], r[actor], r["Computer"], r["sIP"]))
        return results

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        return (result["TimeGenerated"], result[self.actor], result["Computer"], result["sIP"])

    def last_activity(self, result: Mapping[str, Any]) -> Any:
        return result["TimeGenerated"] + self.time_bin

    def title(self, result: Mapping[str, Any]) -> str:
        """e.g. `203.0.113.7 on web01.contoso.com (25 failed logons)`."""
        return f"{result[self.actor]} on {result['Computer']} ({result[COUNT_COLUMN]} failed logons)"

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        """The fields an analyst reads first."""
        return (
            (self.actor_label, self.actor),
            ("Server", "Computer"),
            ("Server IP", "sIP"),
            ("Failed attempts", COUNT_COLUMN),
            self.companions,
            ("IIS status", "set_scStatusFull_Friendly"),
            ("Win32 status", "set_scWin32Status_Friendly"),
            ("User agents", "set_csUserAgent"),
            ("Query strings", "set_decodedUriQuery"),
        )

    def describe_bin(self) -> str:
        """The bin in words for summaries: "1m", "10m"."""
        return format_timespan(self.time_bin)
