"""Sentinel rule 884c4957 "High count of failed logons by a user" (v1.0.3).

Failed logons (401/403 with a user name) counted per 10-minute bin by csUserName, Computer, sIP; a group
with 100 or more fires. Before the enrichments the query strips Exchange's per-request identifiers from
csUriQuery, so that one user's requests do not each look different:

  csUriQuery = iff(csUriQuery startswith "MailboxId=", tostring(split(csUriQuery, "&")[0]), csUriQuery)
  csUriQuery = iff(csUriQuery startswith "X-ARR-CACHE-HIT=",
                   strcat(tostring(split(csUriQuery, "&")[0]), tostring(split(csUriQuery, "&")[1])), csUriQuery)

and after the projection it derives the Account and Host entity fields:

  HostName = tostring(split(Computer, ".")[0]), DomainIndex = toint(indexof(Computer, '.'))
  HostNameDomain = iff(DomainIndex != -1, substring(Computer, DomainIndex + 1), Computer)
  AccountName = tostring(split(csUserName, "@")[0]), AccountUPNSuffix = tostring(split(csUserName, "@")[1])

`startswith` is case-insensitive; an element past the end of split()'s array is null, which tostring()
and strcat() turn into "" (detector/kql_strings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from detector.kql import strcat, tostring
from detector.kql_strings import array_element, indexof, split, startswith, substring
from detector.logic import register
from detector.logic.failed_logons import COUNT_COLUMN, FailedLogonCount


@lru_cache(maxsize=65536)
def exchange_uri_query(cs_uri_query: str) -> str:
    """csUriQuery after the rule's two Exchange rewrites, applied in order as the query does."""
    query = cs_uri_query
    if startswith(query, "MailboxId="):
        query = tostring(array_element(split(query, "&"), 0))
    if startswith(query, "X-ARR-CACHE-HIT="):
        parts = split(query, "&")
        query = strcat(tostring(array_element(parts, 0)), tostring(array_element(parts, 1)))
    return query


def host_fields(computer: str) -> tuple[str, int, str]:
    """(HostName, DomainIndex, HostNameDomain) of a Computer value."""
    host_name = tostring(array_element(split(computer, "."), 0))
    domain_index = indexof(computer, ".")
    host_name_domain = substring(computer, domain_index + 1) if domain_index != -1 else computer
    return host_name, domain_index, host_name_domain


def account_fields(user_name: str) -> tuple[str, str]:
    """(AccountName, AccountUPNSuffix) of a csUserName value: the parts before and after the first "@"."""
    parts = split(user_name, "@")
    return tostring(array_element(parts, 0)), tostring(array_element(parts, 1))


@register
class HighFailedLogonCountByUser(FailedLogonCount):
    """A user name failing to log on `failedThreshold` times or more within one bin on one server."""

    rule_id = "884c4957-70ea-4f57-80b9-1bca3890315b"
    actor = "csUserName"
    actor_label = "User"
    companions = ("Client IPs", "set_cIP")
    projection = (
        "TimeGenerated",
        "csUserName",
        "set_decodedUriQuery",
        "Computer",
        "set_sSiteName",
        "sIP",
        "set_cIP",
        "set_sPort",
        "set_csUserAgent",
        "set_csMethod",
        "set_scStatusFull",
        "set_scStatusFull_Friendly",
        "set_scWin32Status_Hex",
        "set_scWin32Status_Friendly",
        COUNT_COLUMN,
    )
    extensions = ("HostName", "DomainIndex", "HostNameDomain", "AccountName", "AccountUPNSuffix")

    def uri_query(self, cs_uri_query: str) -> str:
        return exchange_uri_query(cs_uri_query)

    def extend(self, result: dict[str, Any]) -> None:
        result["HostName"], result["DomainIndex"], result["HostNameDomain"] = host_fields(result["Computer"])
        result["AccountName"], result["AccountUPNSuffix"] = account_fields(result["csUserName"])

    def summary(self, result: Mapping[str, Any]) -> str:
        """One sentence: which user failed how often, where, from which clients."""
        clients = ", ".join(result["set_cIP"]) or "no client IP"
        return (
            f"User {result['csUserName']} failed to log on {result[COUNT_COLUMN]} times within {self.describe_bin()} "
            f"on {result['Computer']} ({result['sIP']}), from {clients}."
        )
