"""Seeded generator of the failed-logon fixture. Run `python tests/files/generate_logons.py` to rewrite it.

Writes `w3ciislog_logons.jsonl` (W3CIISLog rows with Log Analytics column names, in no particular
order) and `expected_logon_findings.json`: for each of the two failed-logon rules (19e01883 by client IP,
884c4957 by user), the groups the planted scenarios must make fire, with their failure counts, derived
from how the scenarios were built (not by running the detector). Background traffic never brings a
group near a threshold: at most 3 failures per client IP per minute and per user per 10 minutes.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 20261127
DAY = datetime(2026, 11, 26, tzinfo=UTC)  # the window the tests use: [DAY, DAY + 1d)
BY_CLIENT_IP = "19e01883-15d8-4eb6-a7a5-3276cd668388"
BY_USER = "884c4957-70ea-4f57-80b9-1bca3890315b"
MINUTE, TEN_MINUTES = timedelta(minutes=1), timedelta(minutes=10)
COLUMNS = [
    "TimeGenerated",
    "Computer",
    "sSiteName",
    "sIP",
    "sPort",
    "csMethod",
    "csUriStem",
    "csUriQuery",
    "csUserName",
    "cIP",
    "csUserAgent",
    "scStatus",
    "scSubStatus",
    "scWin32Status",
]
# Queries Exchange writes (MailboxId=, X-ARR-CACHE-HIT= with per-request ids), and odd encodings.
QUERIES = [
    "-",
    "",
    "ReturnUrl=%2Fowa%2F",
    "q=a+b%20c",
    "x=%zz%4",
    "bad=%E2%82",
    "k=caf%C3%A9",
    "s=%3Cscript%3E",
    "X-ARR-CACHE-HIT=1",
]
AGENTS = ["Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)", "Microsoft+Office/16.0", "python-requests/2.31", "-", ""]
WIN32 = ["1326", "5", "2148074252", "2148074254", "0", "-", "1909", "-5"]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if not moment.microsecond else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bin_of(moment: datetime, size: timedelta) -> datetime:
    return moment - (moment - DAY) % size


class Builder:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.rows: list[dict[str, Any]] = []
        self.expected: list[dict[str, Any]] = []

    def row(self, moment: datetime, cip: str, user: str, computer: str, sip: str, status: str, **extra: Any) -> None:
        rng = self.rng
        row: dict[str, Any] = {
            "TimeGenerated": iso(moment),
            "Computer": computer,
            "sSiteName": rng.choice(["Default Web Site", "Exchange Back End", ""]),
            "sIP": sip,
            "sPort": rng.choice([443, 443, 80, None]),
            "csMethod": rng.choice(["GET", "POST", "POST"]),
            "csUriStem": "/owa/auth.owa",
            "csUriQuery": rng.choice(QUERIES),
            "csUserName": user,
            "cIP": cip,
            "csUserAgent": rng.choice(AGENTS),
            "scStatus": status,
            "scSubStatus": rng.choice(["0", "1", "2", "4", ""]),
            "scWin32Status": rng.choice(WIN32),
        }
        row.update(extra)
        self.rows.append({k: v for k, v in row.items() if v is not ...})

    def burst(
        self,
        start: datetime,
        span: timedelta,
        count: int,
        cips: list[str],
        users: list[str],
        computer: str,
        sip: str,
        statuses: tuple[str, ...] = ("401",),
        **extra: Any,
    ) -> None:
        """`count` failed requests spread over [start, start + span), cycling through clients and users."""
        for i in range(count):
            moment = start + timedelta(seconds=self.rng.uniform(0, span.total_seconds() - 1))
            moment = moment.replace(microsecond=0)
            self.row(moment, cips[i % len(cips)], users[i % len(users)], computer, sip, statuses[i % len(statuses)], **extra)

    def expect(self, rule: str, bin_start: datetime, actor: str, computer: str, sip: str, count: int, **columns: Any) -> None:
        key = "cIP" if rule == BY_CLIENT_IP else "csUserName"
        found = {"RuleId": rule, "TimeGenerated": iso(bin_start), key: actor, "Computer": computer, "sIP": sip}
        self.expected.append({**found, "FailedConnectionsCount": count, **columns})


def build() -> Builder:
    b = Builder()
    at = DAY

    # ---- by client IP: >= 20 failures in one minute by (cIP, Computer, sIP) ----
    # Password spraying: one client, many users, 401 and 403 mixed.
    spray = at + timedelta(hours=8, minutes=15)
    users = [f"user{i:02d}@contoso.com" for i in range(25)]
    b.burst(spray, MINUTE, 25, ["203.0.113.31"], users, "web01.contoso.com", "10.0.0.4", ("401", "403"))
    b.expect(BY_CLIENT_IP, spray, "203.0.113.31", "web01.contoso.com", "10.0.0.4", 25)
    # Exactly at the threshold, and one short of it on another server.
    edge = at + timedelta(hours=11, minutes=42)
    b.burst(edge, MINUTE, 20, ["198.51.100.40"], ["svc-sql"], "web02.contoso.com", "10.0.0.5", ("403",))
    b.expect(BY_CLIENT_IP, edge, "198.51.100.40", "web02.contoso.com", "10.0.0.5", 20)
    b.burst(edge, MINUTE, 19, ["198.51.100.41"], ["svc-sql"], "web02.contoso.com", "10.0.0.5")
    # 20 failures straddling a minute edge: 10 + 10, neither bin fires.
    straddle = at + timedelta(hours=13, minutes=7)
    for start in (straddle - timedelta(seconds=10), straddle):
        b.burst(start, timedelta(seconds=10), 10, ["198.51.100.42"], ["bob"], "web01.contoso.com", "10.0.0.4")
    # Anonymous challenges (csUserName "-") never count; with them, 19 real failures stay below 20.
    b.burst(at + timedelta(hours=15), MINUTE, 40, ["198.51.100.43"], ["-"], "web01.contoso.com", "10.0.0.4", ("401",))
    b.burst(at + timedelta(hours=15), MINUTE, 19, ["198.51.100.43"], ["carol"], "web01.contoso.com", "10.0.0.4", ("401",))
    # Statuses that are not failures, in bulk: 200, 302, 404, 440, 500, and "401 " with a space.
    b.burst(
        at + timedelta(hours=16),
        MINUTE,
        60,
        ["198.51.100.44"],
        ["dave"],
        "web01.contoso.com",
        "10.0.0.4",
        ("200", "302", "404", "440", "500", "401 "),
    )
    # First and last bins of the day, an IPv6 client, and more than 128 distinct users (the makeset cap).
    b.burst(at, MINUTE, 22, ["203.0.113.60"], ["erin"], "web01.contoso.com", "10.0.0.4")
    b.expect(BY_CLIENT_IP, at, "203.0.113.60", "web01.contoso.com", "10.0.0.4", 22)
    last = at + timedelta(hours=23, minutes=59)
    many = [f"guess{i:03d}" for i in range(200)]
    b.burst(last, MINUTE, 200, ["2001:db8::bad:2"], many, "web02.contoso.com", "2001:db8::10")
    b.expect(BY_CLIENT_IP, last, "2001:db8::bad:2", "web02.contoso.com", "2001:db8::10", 200, setSizes={"set_csUserName": 128})
    # Requests that carry no user name field at all (absent, so "", which is not "-") count.
    absent = at + timedelta(hours=17, minutes=30)
    b.burst(absent, MINUTE, 21, ["198.51.100.45"], ["…"], "web01.contoso.com", "10.0.0.4", csUserName=...)
    b.expect(BY_CLIENT_IP, absent, "198.51.100.45", "web01.contoso.com", "10.0.0.4", 21)
    # Just outside the day on both sides: the window must keep them out.
    b.burst(at - MINUTE, MINUTE, 30, ["203.0.113.61"], ["frank"], "web01.contoso.com", "10.0.0.4")
    b.burst(at + timedelta(days=1), MINUTE, 30, ["203.0.113.62"], ["frank"], "web01.contoso.com", "10.0.0.4")

    # ---- by user: >= 100 failures in ten minutes by (csUserName, Computer, sIP) ----
    # A user hammered from a botnet through Exchange: many client IPs (no client-IP group reaches 20 in a
    # minute), MailboxId= queries with per-request ids that the rule's rewrite strips.
    owa = at + timedelta(hours=9, minutes=20)
    bots = [f"192.0.2.{i}" for i in range(1, 61)]
    # startswith is case-insensitive: every spelling of the prefix is rewritten.
    prefixes = ["MailboxId=", "mailboxid=", "MAILBOXID="]
    mailbox = [prefixes[i % 3] + "7f3e@contoso.com&CorrelationID=<empty>;&cafeReqId=" + str(i) for i in range(120)]
    for i in range(120):
        moment = owa + timedelta(seconds=5 * i)
        b.row(moment, bots[i % len(bots)], "alice@contoso.com", "mail01.contoso.com", "10.0.1.5", "401", csUriQuery=mailbox[i])
    b.expect(BY_USER, owa, "alice@contoso.com", "mail01.contoso.com", "10.0.1.5", 120)
    # Exactly 100, a down-level name on a host without a domain, X-ARR-CACHE-HIT= queries (both cases).
    arr = at + timedelta(hours=12, minutes=40)
    queries = ["X-ARR-CACHE-HIT=0&X-ARR-LOG-ID=" + str(i) + "&x=1" for i in range(50)] + ["x-arr-cache-hit=1"] * 50
    for i in range(100):
        moment = arr + timedelta(seconds=6 * i)
        b.row(moment, bots[i % 7], "CONTOSO\\bob", "MAIL02", "10.0.1.6", "403", csUriQuery=queries[i])
    b.expect(BY_USER, arr, "CONTOSO\\bob", "MAIL02", "10.0.1.6", 100)
    # Two "@" in a user name, a host name ending in a dot; 150 failures from one client, 30 a minute,
    # so it is also a client-IP finding in each of those five minutes.
    odd = at + timedelta(hours=19, minutes=10)
    for i in range(150):
        moment = odd + timedelta(seconds=2 * i)
        b.row(moment, "203.0.113.77", "eve@evil@contoso.com", "web03.", "10.0.1.7", "401", csUriQuery="MailboxId=&a")
    b.expect(BY_USER, odd, "eve@evil@contoso.com", "web03.", "10.0.1.7", 150)
    per_minute: dict[datetime, int] = {}
    for i in range(150):
        minute = bin_of(odd + timedelta(seconds=2 * i), MINUTE)
        per_minute[minute] = per_minute.get(minute, 0) + 1
    for minute, count in sorted(per_minute.items()):
        if count >= 20:
            b.expect(BY_CLIENT_IP, minute, "203.0.113.77", "web03.", "10.0.1.7", count)
    # Near misses: 99; 100 split across a 10-minute edge; the same name in two cases; "-" in bulk.
    b.burst(at + timedelta(hours=14), TEN_MINUTES, 99, bots, ["grace@contoso.com"], "mail01.contoso.com", "10.0.1.5")
    split_at = at + timedelta(hours=20, minutes=30)
    b.burst(split_at - timedelta(minutes=2), timedelta(minutes=2), 60, bots, ["heidi"], "mail01.contoso.com", "10.0.1.5")
    b.burst(split_at, timedelta(minutes=2), 40, bots, ["heidi"], "mail01.contoso.com", "10.0.1.5")
    two_cases = ["ivan@contoso.com", "IVAN@contoso.com"]
    b.burst(at + timedelta(hours=21), TEN_MINUTES, 120, bots, two_cases, "mail01.contoso.com", "10.0.1.5")
    b.burst(at + timedelta(hours=22), TEN_MINUTES, 300, bots, ["-"], "mail01.contoso.com", "10.0.1.5")

    # ---- background: ordinary traffic and scattered single failures, never near a threshold ----
    per_ip_minute: dict[tuple[str, datetime], int] = {}
    per_user_bin: dict[tuple[str, datetime], int] = {}
    for _ in range(2500):
        moment = at + timedelta(seconds=b.rng.randrange(86400))
        cip = f"10.20.{b.rng.randrange(4)}.{b.rng.randrange(1, 40)}"
        user = b.rng.choice(["-", "-", "-", "judy@contoso.com", "mallory", ""])
        status = b.rng.choice(["200", "200", "200", "304", "404", "401", "403"])
        if status in ("401", "403") and user != "-":
            ip_key, user_key = (cip, bin_of(moment, MINUTE)), (user, bin_of(moment, TEN_MINUTES))
            if per_ip_minute.get(ip_key, 0) >= 3 or per_user_bin.get(user_key, 0) >= 3:
                status = "200"
            else:
                per_ip_minute[ip_key] = per_ip_minute.get(ip_key, 0) + 1
                per_user_bin[user_key] = per_user_bin.get(user_key, 0) + 1
        b.row(moment, cip, user, b.rng.choice(["web01.contoso.com", "web02.contoso.com"]), "10.0.0.4", status)
    return b


def main() -> None:
    b = build()
    b.rng.shuffle(b.rows)  # rows in no order, as sources may return them
    with (HERE / "w3ciislog_logons.jsonl").open("w", encoding="utf-8", newline="\n") as out:
        for row in b.rows:
            out.write(json.dumps({c: row[c] for c in COLUMNS if c in row}, ensure_ascii=False) + "\n")
    expected = sorted(b.expected, key=lambda e: (e["RuleId"], -e["FailedConnectionsCount"], e["TimeGenerated"], json.dumps(e)))
    text = json.dumps(expected, indent=1, ensure_ascii=False) + "\n"
    (HERE / "expected_logon_findings.json").write_text(text, encoding="utf-8")
    print(f"{len(b.rows)} rows, {len(expected)} expected findings written to {HERE}")


if __name__ == "__main__":
    main()
