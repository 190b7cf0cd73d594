"""Sentinel rule f845881e "Anomalous User Agent connection attempt" (v1.0.2).

The query, step by step:
  where cIP !startswith "192.168." and cIP != "::1"
  where isnotempty(csUserAgent) and csUserAgent !in~ ("-", "MSRPC")
        and (string_size(csUserAgent) <= 5 or string_size(csUserAgent) >= 1000)
  extend csUserAgent_size = string_size(csUserAgent)
  summarize StartTimeUtc = min(TimeGenerated), EndTimeUtc = max(TimeGenerated), ConnectionCount = count()
    by Computer, sSiteName, sPort, csUserAgent, csUserAgent_size, csUserName, csMethod, csUriStem, sIP, cIP,
       scStatus, scSubStatus, scWin32Status
  where ConnectionCount < 100
  extend timestamp = StartTimeUtc, AccountCustomEntity = csUserName, HostCustomEntity = Computer,
         IPCustomEntity = cIP
No time bin: one group per distinct key over the whole window. `< 100` is non-monotonic: a group can
stop qualifying when more rows of the same window arrive. Sources therefore prune no group (the
threshold does not prune) and only filter rows. A finding is never retracted: when the late-data
re-check finds a reported group at 100 or more, the re-check has no result for it, so nothing is staged
and the finding stays as it was delivered (README, "Rules").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from detector.kql_terms import not_in_ci, not_startswith, string_size
from detector.logic import CandidateSpec, Count, RuleLogic, Threshold, column, register
from detector.logic.window_rows import positive_int, rows_in
from detector.models import Row, Window

RULE_ID = "f845881e-2500-44dc-8ed7-b372af3e1e25"
GROUP_KEYS = (
    "Computer",
    "sSiteName",
    "sPort",
    "csUserAgent",
    "csUserAgent_size",
    "csUserName",
    "csMethod",
    "csUriStem",
    "sIP",
    "cIP",
    "scStatus",
    "scSubStatus",
    "scWin32Status",
)
OUTPUT_COLUMNS = (
    *GROUP_KEYS,
    "StartTimeUtc",
    "EndTimeUtc",
    "ConnectionCount",
    "timestamp",
    "AccountCustomEntity",
    "HostCustomEntity",
    "IPCustomEntity",
)
COLUMNS = ("TimeGenerated", *(c for c in GROUP_KEYS if c != "csUserAgent_size"))
REQUIRED_COLUMNS = ("TimeGenerated", "cIP", "Computer", "sIP", "sPort")
IGNORED_AGENTS = ("-", "MSRPC")


@register
class AnomalousUserAgent(RuleLogic):
    """Parameters: the query's `let` values."""

    rule_id = RULE_ID
    columns = COLUMNS
    required_columns = REQUIRED_COLUMNS
    output_columns = OUTPUT_COLUMNS
    whole_window = True

    def __init__(self, short_ua_length: int = 5, long_ua_length: int = 1000, connection_threshold: int = 100) -> None:
        self.short_ua_length = short_ua_length
        self.long_ua_length = long_ua_length
        self.connection_threshold = connection_threshold
        self.time_bin = timedelta(days=1)  # the rule loader sets queryFrequency

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> AnomalousUserAgent:
        """From the rule file's `parameters`; ValueError naming a bad one."""
        logic = cls(
            positive_int(parameters, "shortUaLength", 5),
            positive_int(parameters, "longUaLength", 1000),
            positive_int(parameters, "connectionThreshold", 100),
        )
        if logic.short_ua_length >= logic.long_ua_length:
            raise ValueError("shortUaLength must be less than longUaLength")
        return logic

    def candidate_spec(self) -> CandidateSpec:
        # The two `where` lines, exactly; `ConnectionCount < 100` prunes nothing (the keys group nothing).
        agent = column("csUserAgent")
        return CandidateSpec(
            filter=column("cIP").not_startswith("192.168.")
            & column("cIP").ne("::1")
            & agent.ne("")
            & agent.not_in_ci(*IGNORED_AGENTS)
            & (agent.size("<=", self.short_ua_length) | agent.size(">=", self.long_ua_length)),
            keys=tuple(c for c in GROUP_KEYS if c != "csUserAgent_size"),
            measure=Count(),
            threshold=Threshold("<", self.connection_threshold),
        )

    def selects(self, row: Row) -> bool:
        """The query's two `where` lines for one row (what a source may push down)."""
        ip, agent = row["cIP"], row["csUserAgent"]
        if not (not_startswith(ip, "192.168.") and ip != "::1"):
            return False
        if not agent or not not_in_ci(agent, IGNORED_AGENTS):
            return False
        size = string_size(agent)
        return size <= self.short_ua_length or size >= self.long_ua_length

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        """Result rows for the rows in the window, in a stable order (KQL leaves it undefined)."""
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows_in(rows, window):
            if not self.selects(row):
                continue
            values = {**row, "csUserAgent_size": string_size(row["csUserAgent"])}
            key = tuple(values[c] for c in GROUP_KEYS)
            moment: datetime = row["TimeGenerated"]
            group = groups.get(key)
            if group is None:
                groups[key] = [moment, moment, 1]
            else:
                group[0], group[1], group[2] = min(group[0], moment), max(group[1], moment), group[2] + 1
        results = []
        for key, (first, last, count) in groups.items():
            if not count < self.connection_threshold:
                continue
            result: dict[str, Any] = dict(zip(GROUP_KEYS, key, strict=True))
            result |= {"StartTimeUtc": first, "EndTimeUtc": last, "ConnectionCount": count, "timestamp": first}
            result |= {
                "AccountCustomEntity": result["csUserName"],
                "HostCustomEntity": result["Computer"],
                "IPCustomEntity": result["cIP"],
            }
            results.append(result)
        results.sort(key=lambda r: (r["StartTimeUtc"], tuple(str(r[c]) for c in GROUP_KEYS)))
        return results

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        """A group within its window: its 13 keys."""
        return tuple(result[c] for c in GROUP_KEYS)

    def finding_key(self, result: Mapping[str, Any], window: Window) -> tuple[Any, ...]:
        """Identity of a whole-window group: the window it was counted over and its 13 keys.

        Never its count, so a re-check that counts more updates the same finding.
        """
        return (window.start, window.end, *self.group_key(result))

    def first_activity(self, result: Mapping[str, Any]) -> Any:
        return result["StartTimeUtc"]

    def last_activity(self, result: Mapping[str, Any]) -> Any:
        return result["EndTimeUtc"]

    def title(self, result: Mapping[str, Any]) -> str:
        return (
            f"{result['cIP']} on {result['Computer']}: user agent of {result['csUserAgent_size']} bytes "
            f"({result['ConnectionCount']} connections)"
        )

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"Client {result['cIP']} sent {result['ConnectionCount']} request(s) to {result['csMethod']} "
            f"{result['csUriStem']} on {result['Computer']} with a user agent of {result['csUserAgent_size']} bytes, "
            f"answered {result['scStatus']}."
        )

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return (
            ("User agent", "csUserAgent"),
            ("User agent bytes", "csUserAgent_size"),
            ("Connections", "ConnectionCount"),
            ("First", "StartTimeUtc"),
            ("Last", "EndTimeUtc"),
            ("Request", "csUriStem"),
            ("Method", "csMethod"),
            ("Status", "scStatus"),
            ("User", "csUserName"),
            ("Site", "sSiteName"),
            ("Port", "sPort"),
        )
