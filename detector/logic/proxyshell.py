r"""Sentinel rule 968358d6 "Exchange SSRF Autodiscover ProxyShell - Detection" (v1.0.1).

The query, step by step (row-level: every matching request is a result row):
  where scStatus has_any (dynamic([200, 302, 401]))          terms "200", "302", "401" of a string column
  where ipv4_is_private(cIP) == False                         IPv6 and unparsable cIP give null: dropped
  where csUriStem hasprefix "/autodiscover/autodiscover.json"
  project TimeGenerated, cIP, sIP, sSiteName, csUriStem, csUriQuery, Computer, csUserName, _ResourceId, FileUri
  where (csUriQuery !has "Protocol" and isnotempty(csUriQuery))
     or (csUriQuery has_any("/mapi/", "powershell"))
     or (csUriQuery contains "@" and csUriQuery matches regex @"\\.[a-zA-Z]{2,4}?(?:[a-zA-Z]{2,4}\\/)")
     or (csUriQuery contains ":" and csUriQuery matches regex @"\\:[0-9]{2,4}\\/")
  extend timestamp = TimeGenerated, HostCustomEntity = Computer, IPCustomEntity = cIP,
         AccountCustomEntity = csUserName, ResourceCustomEntity = _ResourceId, FileCustomEntity = FileUri
IIS writes "-" for an empty query string and W3CIISLog keeps it: "-" is not empty and has no term
"Protocol", so every public 200/302/401 request for autodiscover.json without a query is a result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from detector.kql_terms import contains, has_any, hasprefix, ipv4_is_private, matches_regex, not_has
from detector.logic import CandidateSpec, Opaque, Predicate, RuleLogic, column, register
from detector.logic.window_rows import rows_in
from detector.models import Row, Window

RULE_ID = "968358d6-6af8-49bb-aaa4-187b3067fb95"
PROJECTED = (
    "TimeGenerated",
    "cIP",
    "sIP",
    "sSiteName",
    "csUriStem",
    "csUriQuery",
    "Computer",
    "csUserName",
    "_ResourceId",
    "FileUri",
)
OUTPUT_COLUMNS = (
    *PROJECTED,
    "timestamp",
    "HostCustomEntity",
    "IPCustomEntity",
    "AccountCustomEntity",
    "ResourceCustomEntity",
    "FileCustomEntity",
)
COLUMNS = (*PROJECTED, "scStatus")
REQUIRED_COLUMNS = ("TimeGenerated", "cIP", "Computer", "sIP")
AZURE_COLUMNS = ("_ResourceId", "FileUri")  # added by Azure Monitor, not logged by IIS
AUTODISCOVER = "/autodiscover/autodiscover.json"
DOMAIN_PATTERN = r"\.[a-zA-Z]{2,4}?(?:[a-zA-Z]{2,4}\/)"
PORT_PATTERN = r"\:[0-9]{2,4}\/"


@register
class ProxyShell(RuleLogic):
    """Parameters: the query's `successCodes`."""

    rule_id = RULE_ID
    columns = COLUMNS
    required_columns = REQUIRED_COLUMNS
    output_columns = OUTPUT_COLUMNS
    whole_window = True

    def __init__(self, success_codes: tuple[int, ...] = (200, 302, 401)) -> None:
        self.success_codes = success_codes
        self.time_bin = timedelta(hours=12)  # the rule loader sets queryFrequency

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> ProxyShell:
        """From the rule file's `parameters`; ValueError naming a bad one."""
        codes = parameters.get("successCodes", [200, 302, 401])
        if not isinstance(codes, list) or not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise ValueError(f"successCodes must be a non-empty list of HTTP status codes, got {codes!r}")
        return cls(tuple(codes))

    def candidate_spec(self) -> CandidateSpec:
        # Every `where` but ipv4_is_private (KQL has it, but the shared filter has no node for it: left to the rule).
        return CandidateSpec(filter=self.row_filter())

    def row_filter(self) -> Predicate:
        """The query's `where` lines as a pushdown filter (ipv4_is_private opaque, applied by the rule)."""
        query = column("csUriQuery")
        return (
            column("scStatus").has_any(*self.success_codes)
            & Opaque("ipv4_is_private(cIP) == false", reads=("cIP",))
            & column("csUriStem").hasprefix(AUTODISCOVER)
            & (
                (query.not_has("Protocol") & query.ne(""))
                | query.has_any("/mapi/", "powershell")
                | (query.contains("@") & Opaque(f"matches regex {DOMAIN_PATTERN}", reads=("csUriQuery",)))
                | (query.contains(":") & Opaque(f"matches regex {PORT_PATTERN}", reads=("csUriQuery",)))
            )
        )

    def selects_request(self, row: Row) -> bool:
        """The three `where` lines before the projection (what a source may push down)."""
        return (
            has_any(row["scStatus"], self.success_codes)
            and ipv4_is_private(row["cIP"]) is False
            and hasprefix(row["csUriStem"], AUTODISCOVER)
        )

    @staticmethod
    def suspicious_query(query: str) -> bool:
        """The `where` on csUriQuery after the projection."""
        return (
            (not_has(query, "Protocol") and query != "")
            or has_any(query, ("/mapi/", "powershell"))
            or (contains(query, "@") and matches_regex(query, DOMAIN_PATTERN))
            or (contains(query, ":") and matches_regex(query, PORT_PATTERN))
        )

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        """One result row per matching request in the window, in time order (KQL leaves it undefined)."""
        results = []
        for row in rows_in(rows, window):
            if not self.selects_request(row) or not self.suspicious_query(row["csUriQuery"]):
                continue
            result: dict[str, Any] = {c: row[c] for c in PROJECTED}
            result |= {
                "timestamp": row["TimeGenerated"],
                "HostCustomEntity": row["Computer"],
                "IPCustomEntity": row["cIP"],
                "AccountCustomEntity": row["csUserName"],
                "ResourceCustomEntity": row["_ResourceId"],
                "FileCustomEntity": row["FileUri"],
            }
            results.append(result)
        results.sort(key=lambda r: (r["TimeGenerated"], tuple(str(r[c]) for c in PROJECTED[1:])))
        return results

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        """Identity of a request: its projected columns, never the window (any run that sees it agrees).

        Not the columns Azure Monitor adds (_ResourceId, FileUri): an IIS source does not carry them, and
        the same request read from the log file or from the workspace must give the same id.
        """
        return tuple(result[c] for c in PROJECTED if c not in AZURE_COLUMNS)

    def title(self, result: Mapping[str, Any]) -> str:
        return f"{result['cIP']} to {result['Computer']}: {result['csUriStem']}"

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"Client {result['cIP']} requested {result['csUriStem']} on {result['Computer']} with a query that fits "
            "the ProxyShell SSRF pattern."
        )

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return (
            ("Query", "csUriQuery"),
            ("Path", "csUriStem"),
            ("Time", "TimeGenerated"),
            ("User", "csUserName"),
            ("Site", "sSiteName"),
            ("Server IP", "sIP"),
            ("Resource", "_ResourceId"),
            ("Log file", "FileUri"),
        )
