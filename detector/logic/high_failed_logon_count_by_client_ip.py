"""Sentinel rule 19e01883 "High count of failed attempts from same client IP".

Failed logons (401/403 with a user name) counted per 1-minute bin by cIP, Computer, sIP; a group with
20 or more fires. The shared steps are in failed_logons.py; this module names the columns and the
query's final `extend timestamp = TimeGenerated, HostCustomEntity = Computer, IPCustomEntity = cIP`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.logic import register
from detector.logic.failed_logons import COUNT_COLUMN, FailedLogonCount


@register
class HighFailedLogonCountByClientIP(FailedLogonCount):
    """A client IP failing to log on `failedThreshold` times or more within one bin on one server."""

    rule_id = "19e01883-15d8-4eb6-a7a5-3276cd668388"
    actor = "cIP"
    actor_label = "Client IP"
    companions = ("User names", "set_csUserName")
    required_columns = ("TimeGenerated", "cIP", "Computer", "sIP")
    projection = (
        "TimeGenerated",
        "cIP",
        "set_csUserName",
        "set_decodedUriQuery",
        "Computer",
        "set_sSiteName",
        "sIP",
        "set_sPort",
        "set_csUserAgent",
        "set_csMethod",
        "set_scStatusFull",
        "set_scStatusFull_Friendly",
        "set_scWin32Status_Hex",
        "set_scWin32Status_Friendly",
        COUNT_COLUMN,
    )
    extensions = ("timestamp", "HostCustomEntity", "IPCustomEntity")

    def extend(self, result: dict[str, Any]) -> None:
        result["timestamp"] = result["TimeGenerated"]
        result["HostCustomEntity"] = result["Computer"]
        result["IPCustomEntity"] = result["cIP"]

    def summary(self, result: Mapping[str, Any]) -> str:
        """One sentence: who failed how often, where, within which bin."""
        users = ", ".join(result["set_csUserName"]) or "no user name"
        return (
            f"Client {result['cIP']} failed to log on {result[COUNT_COLUMN]} times within {self.describe_bin()} "
            f"on {result['Computer']} ({result['sIP']}), as {users}."
        )
