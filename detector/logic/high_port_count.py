"""Sentinel rule 44a555d8 "High count of connections by client IP on many ports" (v1.0.2).

The query, step by step (reference/kql-and-sentinel.md §0):
  scStatusFull = strcat(scStatus, ".", scSubStatus); two case() tables; tohex(tolong(scWin32Status));
  url_decode(csUriQuery); summarize makeset(...) (cap 128), count() by bin(TimeGenerated, 10m), cIP,
  Computer, sIP; portCount = arraylength(set_sPort); where portCount >= 30; order by portCount desc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from detector.kql import CappedSet, bin_datetime
from detector.logic import (
    CandidateSpec,
    DistinctCount,
    RuleLogic,
    Threshold,
    bin_parameter,
    check_parameters,
    positive_int_parameter,
    register,
)
from detector.models import Row, Window
from detector.w3ciislog import decoded_query, status_full, win32_status

OUTPUT_COLUMNS = (
    "TimeGenerated",
    "cIP",
    "set_sPort",
    "set_csUserName",
    "set_decodedUriQuery",
    "Computer",
    "set_sSiteName",
    "sIP",
    "set_csUserAgent",
    "set_csMethod",
    "set_scStatusFull",
    "set_scStatusFull_Friendly",
    "set_scWin32Status_Hex",
    "set_scWin32Status_Friendly",
    "ConnectionsCount",
    "portCount",
    "timestamp",
    "IPCustomEntity",
)


def _result_order(result: Mapping[str, Any]) -> tuple[int, datetime, str, str, str]:
    return (-int(result["portCount"]), result["TimeGenerated"], result["cIP"], result["Computer"], result["sIP"])


class _Group:
    """Accumulator of one (bin, cIP, Computer, sIP) group: the makeset() sets and count()."""

    __slots__ = (
        "agents",
        "count",
        "decoded",
        "methods",
        "ports",
        "sites",
        "status",
        "status_friendly",
        "users",
        "win32_friendly",
        "win32_hex",
    )

    def __init__(self, cap: int) -> None:
        self.ports: CappedSet[int] = CappedSet(cap)
        self.decoded: CappedSet[str] = CappedSet(cap)
        self.users: CappedSet[str] = CappedSet(cap)
        self.sites: CappedSet[str] = CappedSet(cap)
        self.agents: CappedSet[str] = CappedSet(cap)
        self.methods: CappedSet[str] = CappedSet(cap)
        self.status: CappedSet[str] = CappedSet(cap)
        self.status_friendly: CappedSet[str] = CappedSet(cap)
        self.win32_hex: CappedSet[str] = CappedSet(cap)
        self.win32_friendly: CappedSet[str] = CappedSet(cap)
        self.count = 0

    def add(self, row: Row) -> None:
        self.count += 1
        self.ports.add(row.get("sPort"))
        self.decoded.add(decoded_query(row.get("csUriQuery") or ""))
        self.users.add(row.get("csUserName") or "")
        self.sites.add(row.get("sSiteName") or "")
        self.agents.add(row.get("csUserAgent") or "")
        self.methods.add(row.get("csMethod") or "")
        full, friendly = status_full(row.get("scStatus") or "", row.get("scSubStatus") or "")
        self.status.add(full)
        self.status_friendly.add(friendly)
        hex_value, win32_text = win32_status(row.get("scWin32Status") or "")
        self.win32_hex.add(hex_value)
        self.win32_friendly.add(win32_text)


@register
class HighPortCountByClientIP(RuleLogic):
    """A client IP reaching `portThreshold` distinct server ports of one server within one time bin."""

    rule_id = "44a555d8-ecee-4a25-95ce-055879b4b14b"
    output_columns = OUTPUT_COLUMNS
    required_columns = ("TimeGenerated", "cIP", "Computer", "sIP", "sPort")
    columns = (
        *required_columns,
        "csUriQuery",
        "csUserName",
        "sSiteName",
        "csUserAgent",
        "csMethod",
        "scStatus",
        "scSubStatus",
        "scWin32Status",
    )

    def __init__(self, time_bin: timedelta, port_threshold: int, max_set_size: int) -> None:
        self.time_bin = time_bin
        self.port_threshold = port_threshold
        self.max_set_size = max_set_size

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> HighPortCountByClientIP:
        check_parameters(parameters, {"timeBin", "portThreshold", "maxSetSize"})
        time_bin = bin_parameter(parameters, "timeBin", "10m")
        threshold = positive_int_parameter(parameters, "portThreshold")
        cap = positive_int_parameter(parameters, "maxSetSize", " (128 for the legacy makeset)")
        if threshold > cap:
            raise ValueError("portThreshold above maxSetSize can never fire (portCount is capped)")
        return cls(time_bin, threshold, cap)

    def candidate_spec(self) -> CandidateSpec:
        # summarize ... by bin(TimeGenerated, timeBin), cIP, Computer, sIP | where portCount >= portThreshold,
        # portCount being the (capped) distinct count of sPort; the query has no row filter.
        return CandidateSpec(
            keys=("cIP", "Computer", "sIP"),
            time_bin=self.time_bin,
            measure=DistinctCount("sPort"),
            threshold=Threshold(">=", self.port_threshold),
        )

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        groups: dict[tuple[datetime, str, str, str], _Group] = {}
        start, end, size, cap = window.start, window.end, self.time_bin, self.max_set_size
        bin_cache: dict[datetime, datetime] = {}  # IIS times have second precision: many repeats
        for row in rows:
            moment = row["TimeGenerated"]
            if not start <= moment < end:
                continue
            bin_start = bin_cache.get(moment)
            if bin_start is None:
                if len(bin_cache) > 100_000:
                    bin_cache.clear()
                bin_start = bin_cache[moment] = bin_datetime(moment, size)
            key = (bin_start, row.get("cIP") or "", row.get("Computer") or "", row.get("sIP") or "")
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(cap)
            group.add(row)

        results = []
        for (bin_start, cip, computer, sip), group in groups.items():
            port_count = len(group.ports)  # arraylength of the capped set
            if port_count < self.port_threshold:
                continue
            results.append(
                {
                    "TimeGenerated": bin_start,
                    "cIP": cip,
                    "set_sPort": group.ports.values(),
                    "set_csUserName": group.users.values(),
                    "set_decodedUriQuery": group.decoded.values(),
                    "Computer": computer,
                    "set_sSiteName": group.sites.values(),
                    "sIP": sip,
                    "set_csUserAgent": group.agents.values(),
                    "set_csMethod": group.methods.values(),
                    "set_scStatusFull": group.status.values(),
                    "set_scStatusFull_Friendly": group.status_friendly.values(),
                    "set_scWin32Status_Hex": group.win32_hex.values(),
                    "set_scWin32Status_Friendly": group.win32_friendly.values(),
                    "ConnectionsCount": group.count,
                    "portCount": port_count,
                    "timestamp": bin_start,
                    "IPCustomEntity": cip,
                }
            )
        # order by portCount (desc by default in KQL). Ties are unordered in KQL; we break them by the
        # group key so output is reproducible.
        results.sort(key=_result_order)
        return results

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        return (result["TimeGenerated"], result["cIP"], result["Computer"], result["sIP"])

    def last_activity(self, result: Mapping[str, Any]) -> Any:
        return result["TimeGenerated"] + self.time_bin

    def title(self, result: Mapping[str, Any]) -> str:
        return f"{result['cIP']} on {result['Computer']} ({result['portCount']} ports)"

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"Client IP {result['cIP']} reached {result['portCount']} distinct ports on server {result['Computer']} "
            f"({result['sIP']}) in {result['ConnectionsCount']} connections."
        )

    def evidence(self, result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return EVIDENCE


# What an analyst reads first: the value sets behind the port count, the ports and the client's tools first.
EVIDENCE: tuple[tuple[str, str], ...] = (
    ("Ports", "set_sPort"),
    ("User agents", "set_csUserAgent"),
    ("Methods", "set_csMethod"),
    ("Status codes", "set_scStatusFull"),
    ("Status meanings", "set_scStatusFull_Friendly"),
    ("Win32 status (hex)", "set_scWin32Status_Hex"),
    ("Win32 status meanings", "set_scWin32Status_Friendly"),
    ("User names", "set_csUserName"),
    ("Site names", "set_sSiteName"),
    ("Decoded URI queries", "set_decodedUriQuery"),
)
