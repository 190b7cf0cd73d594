"""Logic of the test-only rule in this folder: 404s per 10-minute bin by cIP, Computer, sIP."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from detector.kql import CappedSet, bin_datetime
from detector.logic import CandidateSpec, Count, RuleLogic, Threshold, column, register
from detector.models import Row, Window


@register
class NotFoundByClientIP(RuleLogic):
    rule_id = "6b1d2f0e-4c3a-4e59-9a77-0d5e2c1f9a10"
    required_columns = ("TimeGenerated", "cIP", "Computer", "sIP")
    columns = (*required_columns, "scStatus", "csUriStem")
    output_columns = ("TimeGenerated", "cIP", "Computer", "sIP", "set_csUriStem", "NotFoundCount", "IPCustomEntity")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.time_bin = timedelta(minutes=10)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> NotFoundByClientIP:
        threshold = parameters.get("threshold")
        if set(parameters) != {"threshold"} or not isinstance(threshold, int) or threshold < 1:
            raise ValueError("expected one parameter, threshold, a positive integer")
        return cls(threshold)

    def candidate_spec(self) -> CandidateSpec:
        # where scStatus == "404" | summarize count() by bin(TimeGenerated, 10m), cIP, Computer, sIP | where >= threshold
        return CandidateSpec(
            filter=column("scStatus").eq("404"),
            keys=("cIP", "Computer", "sIP"),
            time_bin=self.time_bin,
            measure=Count(),
            threshold=Threshold(">=", self.threshold),
        )

    def evaluate(self, rows: Iterable[Row], window: Window) -> list[dict[str, Any]]:
        groups: dict[tuple[Any, ...], tuple[CappedSet[str], list[int]]] = {}
        for row in rows:
            if not window.contains(row["TimeGenerated"]) or row.get("scStatus") != "404":
                continue
            key = (bin_datetime(row["TimeGenerated"], self.time_bin), row["cIP"], row["Computer"], row["sIP"])
            stems, count = groups.setdefault(key, (CappedSet(1_048_576), [0]))
            stems.add(row.get("csUriStem") or "")
            count[0] += 1
        results = [
            {
                "TimeGenerated": key[0],
                "cIP": key[1],
                "Computer": key[2],
                "sIP": key[3],
                "set_csUriStem": stems.values(),
                "NotFoundCount": count[0],
                "IPCustomEntity": key[1],
            }
            for key, (stems, count) in groups.items()
            if count[0] >= self.threshold
        ]
        return sorted(results, key=lambda r: (r["TimeGenerated"], r["cIP"], r["Computer"], r["sIP"]))

    def group_key(self, result: Mapping[str, Any]) -> tuple[Any, ...]:
        return (result["TimeGenerated"], result["cIP"], result["Computer"], result["sIP"])

    def title(self, result: Mapping[str, Any]) -> str:
        return f"{result['cIP']} on {result['Computer']} ({result['NotFoundCount']} not found)"

    def summary(self, result: Mapping[str, Any]) -> str:
        return (
            f"Client {result['cIP']} received {result['NotFoundCount']} not-found responses from "
            f"{result['Computer']} ({result['sIP']}) within 10 minutes."
        )
