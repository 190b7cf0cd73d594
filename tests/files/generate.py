"""Seeded generator of the bundled fixture data. Run `python tests/files/generate.py` to rewrite it.

Writes the same W3CIISLog rows in every supported format, plus IIS W3C log files for one server,
`expected_findings.json`: the findings the planted scenarios must produce, and `expected_sets.json`: set
columns some of them must have, all derived from how they were built (not by running the detector), so
tests compare the engine with an independent oracle.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 20261126
DAY = datetime(2026, 11, 26, tzinfo=UTC)  # the window the tests use: [DAY, DAY + 1d)
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
    "csReferer",
    "scStatus",
    "scSubStatus",
    "scWin32Status",
    "TimeTaken",
]
AGENTS = ["Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)", "curl/8.4.0", "-", "Mozilla/5.0+(compatible;+Nmap+Scripting+Engine)"]
# Query strings with odd encodings, each with its url_decode() written out by hand from .NET's
# Uri.UnescapeDataString rules (what Kusto's reference emulators call): '+' is kept, a malformed escape
# stays as written, and a %XX sequence that is not UTF-8 stays as its original text. None: "" is not a
# set member (make_set skips empty strings).
ODD_QUERIES: list[tuple[str, str | None]] = [
    ("-", "-"),
    ("", None),
    ("q=a+b%20c", "q=a+b c"),
    ("x=%zz%4", "x=%zz%4"),
    ("bad=%E2%82", "bad=%E2%82"),
    ("u=%E2%82%AC%20euro", "u=\u20ac euro"),
    ("s=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "s=<script>alert(1)</script>"),
    ("plus=1%2B1", "plus=1+1"),
    ("%", "%"),
    ("id=%u0041", "id=%u0041"),
    ("k=caf%C3%A9", "k=caf\u00e9"),
    ("bidi=%E2%80%8E%F0%90%90", "bidi=\u200e%F0%90%90"),  # dotnet/runtime PercentEncodingHelperTests
    ("low=%c3%a9%C3+x", "low=\u00e9%C3+x"),
    ("surrogate=%ED%A0%80&overlong=%C0%AF", "surrogate=%ED%A0%80&overlong=%C0%AF"),
    ("pct=%2541%%41", "pct=%41%A"),
]


def iso(moment: datetime, seven_digits: bool = False) -> str:
    if seven_digits:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "7Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if not moment.microsecond else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Builder:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.rows: list[dict[str, Any]] = []
        self.expected: list[dict[str, Any]] = []
        self.expected_sets: list[dict[str, Any]] = []

    def row(self, moment: datetime, cip: str, computer: str, sip: str, port: int | None, **extra: Any) -> dict[str, Any]:
        rng = self.rng
        row = {
            "TimeGenerated": iso(moment),
            "Computer": computer,
            "sSiteName": "Default Web Site",
            "sIP": sip,
            "sPort": port,
            "csMethod": rng.choice(["GET", "GET", "POST", "HEAD"]),
            "csUriStem": "/index.html",
            "csUriQuery": rng.choice(["-", "-", "id=1"]),
            "csUserName": "-",
            "cIP": cip,
            "csUserAgent": rng.choice(AGENTS[:3]),
            "csReferer": "-",
            "scStatus": "200",
            "scSubStatus": "0",
            "scWin32Status": "0",
            "TimeTaken": rng.randint(1, 900),
        }
        row.update(extra)
        self.rows.append(row)
        return row

    def scan(
        self,
        start: datetime,
        cip: str,
        computer: str,
        sip: str,
        ports: list[int],
        spread_s: int = 500,
        fires_bins: bool = True,
        **extra: Any,
    ) -> None:
        """Plant a scan: one row per port at random seconds within [start, start + spread_s)."""
        for port in ports:
            moment = start + timedelta(seconds=self.rng.randrange(spread_s))
            self.row(moment, cip, computer, sip, port, csUserAgent=AGENTS[3], **extra)

    def expect(self, bin_start: datetime, cip: str, computer: str, sip: str, port_count: int, connections: int) -> None:
        self.expected.append(
            {
                "TimeGenerated": iso(bin_start),
                "cIP": cip,
                "Computer": computer,
                "sIP": sip,
                "portCount": port_count,
                "ConnectionsCount": connections,
            }
        )

    def expect_sets(self, bin_start: datetime, cip: str, computer: str, sip: str, **sets: list[Any]) -> None:
        """Set columns a planted finding must have (sorted), for the formats whose rows agree on them."""
        self.expected_sets.append({"TimeGenerated": iso(bin_start), "cIP": cip, "Computer": computer, "sIP": sip, **sets})


def build() -> Builder:
    b = Builder()
    rng = b.rng
    web01, web02 = "web01.contoso.com", "web02.contoso.com"
    # Background: many clients on 80/443 all day; never near 30 ports.
    for _ in range(800):
        moment = DAY + timedelta(seconds=rng.randrange(86400))
        b.row(moment, f"198.51.100.{rng.randrange(1, 250)}", rng.choice([web01, web02]), "10.0.0.4", rng.choice([80, 443]))

    # 1. Classic scan, odd encodings everywhere: 40 ports in the 10:00 bin on web01. The site name is
    #    not logged (IIS's default field set), so it is "" and make_set leaves set_sSiteName empty; "" is
    #    skipped in the user names too, "-" is kept; tolong("-") is null, so its "" hex is no member.
    t = DAY + timedelta(hours=10)
    for i, port in enumerate(range(8000, 8040)):
        b.row(
            t + timedelta(seconds=i * 7),
            "203.0.113.9",
            web01,
            "10.0.0.4",
            port,
            csUserAgent=AGENTS[3],
            sSiteName="",
            csUriQuery=ODD_QUERIES[i % len(ODD_QUERIES)][0],
            scStatus=["401", "403", "404"][i % 3],
            scSubStatus=["1", "4", "0"][i % 3],
            scWin32Status=["2148074252", "1326", "-", "5"][i % 4],
            csUserName=["-", "", "CONTOSO\\alice"][i % 3],
        )
    b.expect(t, "203.0.113.9", web01, "10.0.0.4", 40, 40)
    assert len(ODD_QUERIES) <= 40, "every odd query is in the scan"
    b.expect_sets(
        t,
        "203.0.113.9",
        web01,
        "10.0.0.4",
        set_decodedUriQuery=sorted(decoded for _, decoded in ODD_QUERIES if decoded is not None),
        set_sSiteName=[],
        set_csUserName=["-", "CONTOSO\\alice"],
        set_scWin32Status_Hex=["5", "52e", "8009030c"],
    )

    # 2. IPv6 scanner over 200 ports: portCount capped at 128 (the legacy makeset limit).
    t = DAY + timedelta(hours=3, minutes=20)
    b.scan(t, "2001:db8::bad:1", web02, "2001:db8::10", list(range(1, 201)))
    b.expect(t, "2001:db8::bad:1", web02, "2001:db8::10", 128, 200)

    # 3. Near miss: 29 ports.
    b.scan(DAY + timedelta(hours=5), "203.0.113.29", web01, "10.0.0.4", list(range(9000, 9029)))

    # 4. Bin edge: 20 ports in the last second of 11:00-11:10 and 20 in its first second after: no finding.
    for port in range(7000, 7020):
        b.row(DAY + timedelta(hours=11, minutes=9, seconds=59, microseconds=999999), "203.0.113.40", web01, "10.0.0.4", port)
    for port in range(7020, 7040):
        b.row(DAY + timedelta(hours=11, minutes=10), "203.0.113.40", web01, "10.0.0.4", port)

    # 5. Window edges: a scan just before the window (excluded), at its very first instant (included),
    #    and at its end instant (excluded: the window is half-open).
    b.scan(DAY - timedelta(minutes=5), "203.0.113.50", web01, "10.0.0.4", list(range(6000, 6035)), spread_s=290)
    for port in range(6100, 6131):
        b.row(DAY, "203.0.113.51", web01, "10.0.0.4", port)
    b.expect(DAY, "203.0.113.51", web01, "10.0.0.4", 31, 31)
    for port in range(6200, 6240):
        b.row(DAY + timedelta(days=1), "203.0.113.52", web01, "10.0.0.4", port)

    # 6. Missing values: rows without a port (null), without a user name or win32 status, and
    #    timestamps with 7 fractional digits (Kusto's 100 ns ticks), all in one scan at 14:30.
    t = DAY + timedelta(hours=14, minutes=30)
    for i, port in enumerate(range(5000, 5030)):
        row = b.row(t + timedelta(seconds=i, microseconds=123456), "192.0.2.77", web01, "10.0.0.4", port, csUserAgent=AGENTS[3])
        if i % 5 == 0:
            row["TimeGenerated"] = iso(t + timedelta(seconds=i, microseconds=123456), seven_digits=True)
        if i % 4 == 0:
            row["csUserName"] = None
        if i % 6 == 0:
            row["scWin32Status"] = "-"
    for _ in range(3):
        b.row(t + timedelta(seconds=40), "192.0.2.77", web01, "10.0.0.4", None, csUserAgent=AGENTS[3])
    b.expect(t, "192.0.2.77", web01, "10.0.0.4", 30, 33)
    b.expect_sets(t, "192.0.2.77", web01, "10.0.0.4", set_csUserName=["-"], set_scWin32Status_Hex=["0"])

    # 7. One computer, two server IPs, 20 ports each: no finding.
    t = DAY + timedelta(hours=16)
    b.scan(t, "203.0.113.70", web01, "10.0.0.4", list(range(4000, 4020)))
    b.scan(t, "203.0.113.70", web01, "10.0.0.5", list(range(4020, 4040)))

    # 8. One scanner, two computers, 30 ports each: two findings. Then the same scanner again later
    #    with repeated ports (60 rows, 30 distinct).
    t = DAY + timedelta(hours=18, minutes=40)
    b.scan(t, "203.0.113.80", web01, "10.0.0.4", list(range(3000, 3030)))
    b.scan(t, "203.0.113.80", web02, "10.0.0.4", list(range(3000, 3030)))
    b.expect(t, "203.0.113.80", web01, "10.0.0.4", 30, 30)
    b.expect(t, "203.0.113.80", web02, "10.0.0.4", 30, 30)
    t = DAY + timedelta(hours=21, minutes=50)
    b.scan(t, "203.0.113.80", web01, "10.0.0.4", list(range(3000, 3030)) * 2)
    b.expect(t, "203.0.113.80", web01, "10.0.0.4", 30, 60)

    b.rows.sort(key=lambda r: r["TimeGenerated"])
    return b


def write_iis(rows: list[dict[str, Any]], folder: Path) -> None:
    """web01's rows as IIS W3C logs, one file per site; the #Fields line changes mid-file."""
    fields_a = [
        "date",
        "time",
        "s-ip",
        "cs-method",
        "cs-uri-stem",
        "cs-uri-query",
        "s-port",
        "cs-username",
        "c-ip",
        "cs(User-Agent)",
        "cs(Referer)",
        "sc-status",
        "sc-substatus",
        "sc-win32-status",
        "time-taken",
    ]
    fields_b = [
        "date",
        "time",
        "s-sitename",
        "s-ip",
        "cs-method",
        "cs-uri-stem",
        "cs-uri-query",
        "s-port",
        "cs-username",
        "c-ip",
        "cs(User-Agent)",
        "cs(Referer)",
        "sc-status",
        "sc-substatus",
        "sc-win32-status",
        "time-taken",
    ]
    column = {
        "s-sitename": "sSiteName",
        "s-ip": "sIP",
        "cs-method": "csMethod",
        "cs-uri-stem": "csUriStem",
        "cs-uri-query": "csUriQuery",
        "s-port": "sPort",
        "cs-username": "csUserName",
        "c-ip": "cIP",
        "cs(User-Agent)": "csUserAgent",
        "cs(Referer)": "csReferer",
        "sc-status": "scStatus",
        "sc-substatus": "scSubStatus",
        "sc-win32-status": "scWin32Status",
        "time-taken": "TimeTaken",
    }
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "#Software: Microsoft Internet Information Services 10.0",
        "#Version: 1.0",
        "#Date: 2026-11-25 23:55:00",
        "#Fields: " + " ".join(fields_a),
    ]
    switched = False
    for row in rows:
        if row["Computer"] != "web01.contoso.com":
            continue
        moment = datetime.fromisoformat(row["TimeGenerated"][:26].rstrip("Z")).replace(tzinfo=UTC)
        if not switched and moment >= DAY + timedelta(hours=12):
            lines += [
                "#Software: Microsoft Internet Information Services 10.0",
                "#Version: 1.0",
                "#Date: 2026-11-26 12:00:00",
                "#Fields: " + " ".join(fields_b),
            ]
            switched = True
        fields = fields_b if switched else fields_a
        values = [moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S")]
        for field in fields[2:]:
            value = row.get(column[field])
            # IIS writes '-' for an empty field and '+' for spaces; user names here have no spaces.
            text = "-" if value is None or value == "" else str(value).replace(" ", "+")
            values.append(text)
        lines.append(" ".join(values))
    (folder / "W3SVC1").mkdir(exist_ok=True)
    (folder / "W3SVC1" / "u_ex261126.log").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def main() -> None:
    b = build()
    with (HERE / "w3ciislog.jsonl").open("w", encoding="utf-8") as out:
        for row in b.rows:
            out.write(json.dumps({k: v for k, v in row.items() if v is not None or k != "csUserName"}) + "\n")
    (HERE / "w3ciislog_array.json").write_text(json.dumps(b.rows, indent=0) + "\n", encoding="utf-8")
    types = {"TimeGenerated": "datetime", "sPort": "int", "TimeTaken": "long"}
    response = {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [{"name": c, "type": types.get(c, "string")} for c in COLUMNS],
                "rows": [[r.get(c) for c in COLUMNS] for r in b.rows],
            }
        ]
    }
    (HERE / "la_response.json").write_text(json.dumps(response) + "\n", encoding="utf-8")
    write_iis(b.rows, HERE / "iis")
    expected = sorted(b.expected, key=lambda e: (-e["portCount"], e["TimeGenerated"], e["cIP"], e["Computer"], e["sIP"]))
    (HERE / "expected_findings.json").write_text(json.dumps(expected, indent=1) + "\n", encoding="utf-8")
    (HERE / "expected_sets.json").write_text(json.dumps(b.expected_sets, indent=1) + "\n", encoding="utf-8")
    print(f"{len(b.rows)} rows, {len(expected)} expected findings written to {HERE}")


if __name__ == "__main__":
    main()
