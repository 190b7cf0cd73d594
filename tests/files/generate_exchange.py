"""Seeded generator of the Exchange and user-agent fixture. Run `python tests/files/generate_exchange.py`.

Writes `exchange_w3ciislog.jsonl`: 15 days of W3CIISLog rows (Log Analytics column names) for two Exchange
servers and a web server, with background traffic built so that no rule matches it, and planted requests
for rules f845881e (anomalous user agents), 968358d6 (ProxyShell) and 23005e87 (Silk Typhoon), near
misses next to each. `exchange_expected.json` lists what each rule must return for the last window, from
how the rows were planted (not by running the detector), so tests compare with an independent oracle.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 20261127
END = datetime(2026, 11, 27, tzinfo=UTC)  # every rule's last window ends here
FIRST = END - timedelta(days=15)  # one day more than Silk Typhoon's 14-day period
RESOURCE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/exchange/providers/microsoft.compute/virtualmachines/"
)
SERVERS = {  # Computer: (sIP, the site its back end logs as, or None for a plain web server)
    "ex01.contoso.com": ("10.0.0.8", "Exchange Back End"),
    "EX02": ("10.0.0.9", "exchange back end"),  # =~ ignores case
    "web01.contoso.com": ("10.0.0.4", None),
}
BROWSERS = [
    "Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)+AppleWebKit/537.36",
    "Microsoft+Office/16.0+(Windows+NT+10.0;+Microsoft+Outlook+16.0.5026;+Pro)",
    "MSRPC",
    "msrpc",
    "-",
    "Outlook",  # 7 bytes: neither short nor long
]
PUBLIC = ["203.0.113.10", "203.0.113.11", "198.51.100.20", "198.51.100.21"]
PRIVATE = ["10.1.2.3", "172.16.5.5", "192.168.10.10", "::1", "fe80::1"]


def row(moment: datetime, computer: str, **values: Any) -> dict[str, Any]:
    """One W3CIISLog row with IIS's placeholders for the fields not given."""
    sip, _ = SERVERS[computer]
    base: dict[str, Any] = {
        "TimeGenerated": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Computer": computer,
        "sSiteName": "Default Web Site",
        "sComputerName": computer.split(".", maxsplit=1)[0].upper(),
        "sIP": sip,
        "csMethod": "GET",
        "csUriStem": "/owa/",
        "csUriQuery": "-",
        "sPort": 443,
        "csUserName": "-",
        "cIP": PUBLIC[0],
        "csVersion": "HTTP/1.1",
        "csUserAgent": BROWSERS[0],
        "csCookie": "-",
        "csReferer": "-",
        "csHost": "mail.contoso.com",
        "scStatus": "200",
        "scSubStatus": "0",
        "scWin32Status": "0",
        "scBytes": 1024,
        "csBytes": 512,
        "TimeTaken": 31,
        "_ResourceId": RESOURCE + computer.split(".", maxsplit=1)[0],
        "FileUri": "C:\\inetpub\\logs\\LogFiles\\W3SVC1\\u_ex" + moment.strftime("%y%m%d") + ".log",
    }
    base.update(values)
    return base


def background(rng: random.Random) -> list[dict[str, Any]]:
    """Traffic no rule matches: browser agents, Protocol-named autodiscover queries, no t= queries."""
    rows = []
    for day in range(15):
        for computer, (_, back_end) in SERVERS.items():
            for _ in range(12):
                moment = FIRST + timedelta(days=day, seconds=rng.randrange(86400))
                rows.append(
                    row(
                        moment,
                        computer,
                        cIP=rng.choice(PUBLIC + PRIVATE),
                        csUserAgent=rng.choice(BROWSERS),
                        csUriQuery=rng.choice(["-", "path=/inbox", "ver=15.2&t", "at=1", "Protocol=Rest"]),
                        sPort=rng.choice([443, 80, None]),
                        scStatus=rng.choice(["200", "302", "401", "404"]),
                    )
                )
                if rng.random() < 0.5:
                    rows.append(
                        row(
                            moment,
                            computer,
                            cIP=rng.choice(PUBLIC + PRIVATE),
                            csUriStem=rng.choice(["/autodiscover/autodiscover.json", "/Autodiscover/Autodiscover.xml"]),
                            csUriQuery=rng.choice(["Email=u@contoso.com&Protocol=ActiveSync", "Protocol=AutodiscoverV1&x=1"]),
                        )
                    )
            if back_end and day % 5 == 1:
                rows.append(row(FIRST + timedelta(days=day, hours=2), computer, sSiteName=back_end, sPort=444))
    return rows


def planted() -> tuple[list[dict[str, Any]], dict[str, list[list[Any]]]]:
    """Rows each rule must (and must not) return in its last window, and the oracle of what it returns."""
    rows: list[dict[str, Any]] = []
    expected: dict[str, list[list[Any]]] = {"anomalous_user_agent": [], "proxyshell": [], "silk_typhoon": []}
    last = END - timedelta(days=1)

    # Anomalous user agents (window: the last day). Key reported: [cIP, csUserAgent, ConnectionCount].
    for i in range(3):
        rows.append(row(last + timedelta(hours=1, minutes=i), "web01.contoso.com", cIP="198.51.100.77", csUserAgent="curl"))
    expected["anomalous_user_agent"].append(["198.51.100.77", "curl", 3])
    rows.append(row(last + timedelta(hours=2), "web01.contoso.com", cIP="198.51.100.78", csUserAgent="ab€"))  # 5 bytes
    expected["anomalous_user_agent"].append(["198.51.100.78", "ab€", 1])
    rows.append(row(last + timedelta(hours=2), "web01.contoso.com", cIP="198.51.100.78", csUserAgent="abcd€"))  # 7: no
    huge = "Mozilla/5.0+" + "x" * 1200
    rows.append(row(last + timedelta(hours=3), "ex01.contoso.com", cIP="2001:db8::77", csUserAgent=huge))
    expected["anomalous_user_agent"].append(["2001:db8::77", huge, 1])
    for i in range(100):  # 100 is not < 100
        rows.append(row(last + timedelta(hours=4, seconds=i), "web01.contoso.com", cIP="198.51.100.79", csUserAgent="go"))
    for i in range(99):
        rows.append(row(last + timedelta(hours=5, seconds=i), "web01.contoso.com", cIP="198.51.100.80", csUserAgent="go"))
    expected["anomalous_user_agent"].append(["198.51.100.80", "go", 99])
    rows.append(row(last + timedelta(hours=6), "web01.contoso.com", cIP="192.168.1.50", csUserAgent="x"))
    rows.append(row(last + timedelta(hours=6), "web01.contoso.com", cIP="::1", csUserAgent="x"))
    rows.append(row(last + timedelta(hours=6), "web01.contoso.com", cIP="10.9.9.9", csUserAgent="x"))
    expected["anomalous_user_agent"].append(["10.9.9.9", "x", 1])
    rows.append(row(last - timedelta(seconds=1), "web01.contoso.com", cIP="198.51.100.81", csUserAgent="x"))  # day before

    # ProxyShell (window: the last 12 hours). Reported: [cIP, csUriQuery].
    half = END - timedelta(hours=12)
    stem = "/autodiscover/autodiscover.json"
    cases = [
        ("203.0.113.50", "@evil.contoso/owa/?&Email=autodiscover/autodiscover.json%3F@evil.contoso", "302", True),
        ("203.0.113.50", "a=1&Email=autodiscover/autodiscover.json%3F@evil.contoso/mapi/nspi", "200", True),
        ("203.0.113.51", "-", "401", True),
        ("203.0.113.52", "Protocol=x&/PowerShell?X-Rps-CAT=1", "200", True),
        ("203.0.113.53", "Protocol=x&u=http://localhost:444/ecp", "200", True),
        ("203.0.113.54", "Protocol=x&/PowerShellX", "200", False),
        ("203.0.113.55", "Protocol=x&Email=a@b.com/", "200", False),
        ("10.2.3.4", "-", "200", False),
        ("2001:db8::50", "-", "200", False),
        ("203.0.113.56", "-", "404", False),
        ("203.0.113.57", "-", "2000", False),
    ]
    for i, (ip, query, status, fires) in enumerate(cases):
        rows.append(
            row(
                half + timedelta(hours=1, minutes=i),
                "ex01.contoso.com",
                cIP=ip,
                csUriStem=stem,
                csUriQuery=query,
                scStatus=status,
            )
        )
        if fires:
            expected["proxyshell"].append([ip, query])
    rows.append(row(half - timedelta(seconds=1), "ex01.contoso.com", cIP="203.0.113.58", csUriStem=stem, csUriQuery="-"))

    # Silk Typhoon (window: 14 days; requests of the last day). Reported: [Computer, csUriQuery].
    rows.append(row(last + timedelta(hours=7), "ex01.contoso.com", csUriQuery="t=1&c=2", csUserName="adm@contoso.com"))
    expected["silk_typhoon"].append(["ex01.contoso.com", "t=1&c=2"])
    rows.append(row(last + timedelta(hours=7), "EX02", csUriQuery="T=abc"))
    expected["silk_typhoon"].append(["EX02", "T=abc"])
    rows.append(row(last + timedelta(hours=7), "web01.contoso.com", csUriQuery="t=1"))  # not an Exchange server
    rows.append(row(last - timedelta(seconds=1), "ex01.contoso.com", csUriQuery="t=old"))  # older than a day
    return rows, expected


def main() -> None:
    """Write the fixture and its oracle."""
    rng = random.Random(SEED)
    planted_rows, expected = planted()
    rows = background(rng) + planted_rows
    rng.shuffle(rows)  # sources and rules must not depend on row order
    with (HERE / "exchange_w3ciislog.jsonl").open("w", encoding="utf-8", newline="\n") as out:
        for item in rows:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    (HERE / "exchange_expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# -- the same rows as IIS W3C logs ---------------------------------------------------------------------

# The W3C fields IIS writes, in its default order, and the W3CIISLog column each becomes.
IIS_FIELDS = (
    ("date", ""),
    ("time", ""),
    ("s-sitename", "sSiteName"),
    ("s-computername", "sComputerName"),
    ("s-ip", "sIP"),
    ("cs-method", "csMethod"),
    ("cs-uri-stem", "csUriStem"),
    ("cs-uri-query", "csUriQuery"),
    ("s-port", "sPort"),
    ("cs-username", "csUserName"),
    ("c-ip", "cIP"),
    ("cs-version", "csVersion"),
    ("cs(User-Agent)", "csUserAgent"),
    ("cs(Cookie)", "csCookie"),
    ("cs(Referer)", "csReferer"),
    ("cs-host", "csHost"),
    ("sc-status", "scStatus"),
    ("sc-substatus", "scSubStatus"),
    ("sc-win32-status", "scWin32Status"),
    ("sc-bytes", "scBytes"),
    ("cs-bytes", "csBytes"),
    ("time-taken", "TimeTaken"),
)


def iis_value(value: Any) -> str:
    """A value as IIS writes a field: spaces as '+', nothing as '-'."""
    if value is None or value == "":
        return "-"
    return str(value).replace(" ", "+")


def as_iis_row(item: dict[str, Any]) -> dict[str, Any]:
    """The row an IIS source reads back for `item`: fields as IIS writes them, Azure Monitor's columns empty."""
    out = dict(item)
    for _, column in IIS_FIELDS[2:]:
        text = iis_value(item.get(column))
        out[column] = (None if text == "-" else int(text)) if column in ("sPort", "scBytes", "csBytes", "TimeTaken") else text
    out["_ResourceId"] = out["FileUri"] = ""
    return out


def write_iis(rows: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """The rows as IIS logs, one folder per Computer (an IIS source reads one machine), a file per day,
    several #Fields blocks per file (IIS starts one at each restart), rows in time order; returns the folders."""
    by_computer: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for item in sorted(rows, key=lambda r: r["TimeGenerated"]):
        day = item["TimeGenerated"][:10]
        by_computer.setdefault(item["Computer"], {}).setdefault(day, []).append(item)
    folders = {}
    for computer, days in by_computer.items():
        target = folder / computer / "W3SVC1"
        target.mkdir(parents=True)
        folders[computer] = folder / computer
        for day, items in days.items():
            lines = []
            for index, item in enumerate(items):
                if index % 50 == 0:
                    lines += ["#Software: Microsoft Internet Information Services 10.0", "#Version: 1.0"]
                    lines += [f"#Date: {day} 00:00:00", "#Fields: " + " ".join(name for name, _ in IIS_FIELDS)]
                date, time = item["TimeGenerated"][:10], item["TimeGenerated"][11:19]
                lines.append(" ".join([date, time, *(iis_value(item.get(column)) for _, column in IIS_FIELDS[2:])]))
            name = f"u_ex{day[2:4]}{day[5:7]}{day[8:10]}.log"
            (target / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folders


if __name__ == "__main__":
    main()
