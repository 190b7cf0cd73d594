"""Sentinel rule 23005e87 "Silk Typhoon Suspicious Exchange Request" (v1.0.3).

Two phases over one 14-day window (queryPeriod 14d, queryFrequency 1d):
  exchange_servers = W3CIISLog | where TimeGenerated > ago(14d) | where sSiteName =~ "Exchange Back End"
                     | summarize by Computer
  W3CIISLog | where TimeGenerated > ago(1d) | where Computer in (exchange_servers)
  | where csUriQuery startswith "t="
  | project-reorder TimeGenerated, Computer, csUriStem, csUriQuery, csUserName, csUserAgent, cIP
  | extend HostName = tostring(split(Computer, ".")[0]), DomainIndex = toint(indexof(Computer, '.'))
  | extend HostNameDomain = iff(DomainIndex != -1, substring(Computer, DomainIndex + 1), Computer)
  | extend AccountName = tostring(split(csUserName, "@")[0]), AccountUPNSuffix = tostring(split(csUserName, "@")[1])
Here `ago(14d)` and `ago(1d)` are the window's own bounds: the first phase reads [end - 14d, end), the
second [end - 1d, end). `project-reorder` keeps every column of the table: the seven named first, then
the others "as the last columns of the output table" in table order (project-reorder-operator.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from detector.kql import parse_timespan
from detector.kql_terms import fold, startswith
from detector.logic import CandidateSpec, FirstPhase, RuleLogic, column, register
from detector.logic.window_rows import rows_in
from detector.models import Row, Window

RULE_ID = "23005e87-2d3a-482b-b03d-edbebd1ae151"
# The W3CIISLog columns the sources carry, in the order this detector gives the table: TimeGenerated and
# Computer, then IIS's own W3C field order, then the Azure columns the rules read. The order of the real
# Log Analytics table is not documented (its reference page sorts by name); `W3CIISLog | getschema` on
# a workspace gives it, and this tuple must follow it for the unnamed columns to come out in Sentinel's order.
TABLE_COLUMNS = (
    "TimeGenerated",
    "Computer",
    "sSiteName",
    "sComputerName",
    "sIP",
    "csMethod",
    "csUriStem",
    "csUriQuery",
    "sPort",
    "csUserName",
    "cIP",
    "csVersion",
    "csUserAgent",
    "csCookie",
    "csReferer",
    "csHost",
    "scStatus",
    "scSubStatus",
    "scWin32Status",
    "scBytes",
    "csBytes",
    "TimeTaken",
    "_ResourceId",
    "FileUri",
)
REORDERED_FIRST = ("TimeGenerated", "Computer", "csUriStem", "csUriQuery", "csUserName", "csUserAgent", "cIP")
EXTENDED = ("HostName", "DomainIndex", "HostNameDomain", "AccountName", "AccountUPNSuffix")


def project_reorder(columns: Iterable[str], first: Iterable[str]) -> tuple[str, ...]:
    """KQL `project-reorder first...` over a table with `columns`: the named ones, then the rest in order."""
    named = list(first)
    return (*named, *(c for c in columns if c not in named))


OUTPUT_COLUMNS = (*project_reorder(TABLE_COLUMNS, REORDERED_FIRST), *EXTENDED)
COLUMNS = TABLE_COLUMNS
REQUIRED_COLUMNS = ("TimeGenerated", "Computer")


@register
class SilkTyphoon(RuleLogic):
    """Parameters: the site name that marks an Exchange server, the two periods, the query prefix."""

    rule_id = RULE_ID
    columns = COLUMNS
    required_columns = REQUIRED_COLUMNS
    output_columns = OUTPUT_COLUMNS
    whole_window = True

    def __init__(
        self,
        exchange_site: str = "Exchange Back End",
        server_lookback: timedelta = timedelta(days=14),
        request_period: timedelta = timedelta(days=1),
        query_prefix: str = "t=",
    ) -> None:
        self.exchange_site = exchange_site
        self.server_lookback = server_lookback
        self.request_period = request_period
        self.query_prefix = query_prefix
        self.time_bin = request_period  # the rule loader sets queryFrequency

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> SilkTyphoon:
        """From the rule file's `parameters`; ValueError naming a bad one."""
        site = parameters.get("exchangeSiteName", "Exchange Back End")
        prefix = parameters.get("queryPrefix", "t=")
        for name, value in (("exchangeSiteName", site), ("queryPrefix", prefix)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        spans = []
        for name, default in (("serverLookback", "14d"), ("requestPeriod", "1d")):
            try:
                spans.append(parse_timespan(str(parameters.get(name, default))))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if spans[1] > spans[0]:
            raise ValueError("requestPeriod must not be longer than serverLookback")
        return cls(site, spans[0], spans[1], prefix)

    def candidate_spec(self) -> CandidateSpec:
        # Phase one on its own (a handful of Computer names), then the recent requests of those servers;
        # the filter admits the rows of both, for a source that reads the window in one go.
        servers = column("sSiteName").eq_ci(self.exchange_site)
        return CandidateSpec(
            filter=column("csUriQuery").startswith(self.query_prefix) | servers,
            first_phase=FirstPhase("Computer", servers, self.request_period),
        )

    def exchange_servers(self, rows: Iterable[Row], window: Window) -> set[str]:
        """Phase one: Computers that served the Exchange back-end site in the last serverLookback of the window."""
        lookback = Window(max(window.start, window.end - self.server_lookback), window.end)
        site = fold(self.exchange_site)
        return {row["Computer"] for row in rows_in(rows, lookback) if fold(row["sSiteName"]) == site}

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        """Result rows: the window's last requestPeriod of requests to those servers with the query prefix."""
        rows = list(rows)
        servers = self.exchange_servers(rows, window)
        recent = Window(max(window.start, window.end - self.request_period), window.end)
        results = []
        for row in rows_in(rows, recent):
            # `in` is case-sensitive; startswith is not.
            if row["Computer"] not in servers or not startswith(row["csUriQuery"], self.query_prefix):
                continue
            result: dict[str, Any] = {c: row[c] for c in OUTPUT_COLUMNS[: -len(EXTENDED)]}
            computer, user = row["Computer"], row["csUserName"]
            dot = computer.find(".")  # indexof(): -1 when absent
            result["HostName"] = computer.split(".")[0]
            result["DomainIndex"] = dot
            result["HostNameDomain"] = computer[dot + 1 :] if dot != -1 else computer
            parts = user.split("@")
            result["AccountName"] = parts[0]
            result["AccountUPNSuffix"] = parts[1] if len(parts) > 1 else ""  # split(...)[1] is null: tostring gives ""
            results.append(result)
        results.sort(key=lambda r: (r["TimeGenerated"], tuple(str(r[c]) for c in TABLE_COLUMNS[1:])))
        return results

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        """Identity of a request: every column IIS logged of it.

        Never the window, nor what Azure Monitor adds (_ResourceId, FileUri: an IIS source does not carry
        them), so the same request gives one id whichever source saw it.
        """
        return tuple(result[c] for c in TABLE_COLUMNS if c not in ("_ResourceId", "FileUri"))

    def title(self, result: Mapping[str, Any]) -> str:
        return f"{result['cIP']} to {result['Computer']}: {result['csUriStem']}?{result['csUriQuery']}"

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"Client {result['cIP']} sent a request with a query starting {self.query_prefix!r} to Exchange server "
            f"{result['Computer']} ({result['csUriStem']}), as user {result['csUserName']}."
        )

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return (
            ("Query", "csUriQuery"),
            ("Path", "csUriStem"),
            ("Time", "TimeGenerated"),
            ("User", "csUserName"),
            ("User agent", "csUserAgent"),
            ("Method", "csMethod"),
            ("Status", "scStatus"),
        )
