"""Seeded generator of realistic W3CIISLog days for the benchmark, as JSON Lines and as an IIS u_ex*.log.

    python benchmarks/generate.py --rows 1000000            # writes benchmarks/data/day-1000000.*

A day is background traffic (browsing sessions of many clients: bursts of requests to ports 80/443 of
six web servers, busier in the afternoon) plus planted port scanners: scans of 30-400 ports within a
few minutes (some straddling a bin edge), near misses of 29 ports, slow scanners that spread their
ports over hours, and scanners that also come back with repeated ports. Rows are in time order, as IIS
writes them and as a Log Analytics export returns them.

Every value is one an IIS log can carry (no spaces, "-" for a missing value), so the IIS file holds
exactly the JSON Lines rows with Computer dropped (the IIS source sets Computer from --computer).
Same seed and row count, same bytes.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

DATA = Path(__file__).resolve().parent / "data"
SEED = 20261127
DAY = datetime(2026, 11, 26, tzinfo=UTC)
SERVERS = [  # (Computer, sIP); web01 and web04 answer on two addresses
    ("web01.contoso.com", "10.0.1.11"),
    ("web01.contoso.com", "10.0.1.12"),
    ("web02.contoso.com", "10.0.1.21"),
    ("web03.contoso.com", "10.0.1.31"),
    ("web04.contoso.com", "10.0.1.41"),
    ("web04.contoso.com", "2001:db8:1::41"),
    ("web05.contoso.com", "10.0.1.51"),
    ("web06.contoso.com", "10.0.1.61"),
]
STEMS = ["/", "/index.html", "/login", "/api/v1/items", "/api/v1/orders", "/static/app.js", "/static/site.css"] + [
    f"/img/p{i}.png" for i in range(40)
]
QUERIES = ["-"] * 12 + [
    "id=1",
    "id=42",
    "page=2&sort=asc",
    "q=red+shoes",
    "q=caf%C3%A9+au+lait",
    "search=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "redirect=https%3a%2f%2fwww.bing.com%2f",
    "bad=%E2%82",
    "x=%zz%4",
    "sum=1%2B1",
    "u=%E2%82%AC%20euro",
    "id=%u0041",
    "%ff%fe",
]
AGENTS = [
    "Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)+AppleWebKit/537.36+(KHTML,+like+Gecko)+Chrome/131.0+Safari/537.36",
    "Mozilla/5.0+(Macintosh;+Intel+Mac+OS+X+14_1)+AppleWebKit/605.1.15+(KHTML,+like+Gecko)+Version/17.1+Safari/605.1.15",
    "Mozilla/5.0+(X11;+Linux+x86_64;+rv:132.0)+Gecko/20100101+Firefox/132.0",
    "Mozilla/5.0+(iPhone;+CPU+iPhone+OS+17_1+like+Mac+OS+X)+AppleWebKit/605.1.15+Mobile/15E148",
    "curl/8.4.0",
    "python-requests/2.32.3",
    "-",
]
SCAN_AGENTS = ["Mozilla/5.0+(compatible;+Nmap+Scripting+Engine;+https://nmap.org/book/nse.html)", "masscan/1.3", "zgrab/0.x"]
STATUSES = [("200", "0", "0")] * 30 + [
    ("304", "0", "0"),
    ("404", "0", "2"),
    ("404", "0", "3"),
    ("401", "2", "5"),
    ("401", "1", "1326"),
    ("401", "1", "2148074252"),
    ("401", "0", "2148074254"),
    ("403", "4", "5"),
    ("500", "0", "1236"),
    ("200", "0", "64"),
    ("400", "0", "-"),
]
SCAN_STATUSES = [("404", "0", "2"), ("400", "0", "-"), ("401", "2", "5"), ("403", "0", "5"), ("200", "0", "0")]
USERS = ["-"] * 20 + ["CONTOSO\\alice", "CONTOSO\\bob", "svc-backup", "admin"]
IIS_FIELDS = (
    "date time s-sitename s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) "
    "sc-status sc-substatus sc-win32-status time-taken"
)
# A row: (second of the day, Computer, sIP, sPort, method, stem, query, user, cIP, agent, status, sub, win32, taken)
Row = tuple[int, str, str, int, str, str, str, str, str, str, str, str, str, int]


def _clients(rng: random.Random, count: int) -> list[str]:
    clients = []
    for i in range(count):
        if i % 25 == 0:
            clients.append(f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}")
        else:
            clients.append(
                f"{rng.choice([198, 203, 100, 172, 81])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            )
    return clients


def _hour_weights() -> list[float]:
    # Quiet at night, busiest mid-afternoon (UTC).
    return [
        0.3,
        0.25,
        0.2,
        0.2,
        0.25,
        0.35,
        0.5,
        0.7,
        0.9,
        1.0,
        1.1,
        1.2,
        1.3,
        1.35,
        1.4,
        1.4,
        1.35,
        1.3,
        1.2,
        1.1,
        1.0,
        0.8,
        0.6,
        0.4,
    ]


def _scans(rng: random.Random, rows: int) -> list[Row]:
    """Planted scanners; about 0.5% of the day's rows."""
    planted: list[Row] = []
    per_million = max(1, rows // 1_000_000)

    def scan(start: int, ports: list[int], spread: int, server: tuple[str, str] | None = None, cip: str = "") -> None:
        computer, sip = server or rng.choice(SERVERS)
        client = cip or f"45.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        agent = rng.choice(SCAN_AGENTS)
        for port in ports:
            status, sub, win32 = rng.choice(SCAN_STATUSES)
            query = rng.choice(["-", "-", "a=%27+OR+1%3D1--", "cmd=%2Fbin%2Fsh", "x=%zz%4", "bad=%E2%82"])
            planted.append(
                (start + rng.randrange(spread), computer, sip, port, rng.choice(["GET", "HEAD", "OPTIONS"]), "/", query, "-",
                 client, agent, status, sub, win32, rng.randrange(1, 50))
            )  # fmt: skip

    for _ in range(12 * per_million):  # fast scans: 30..400 ports within a few minutes
        count = rng.choice([30, 31, 35, 48, 64, 100, 128, 129, 200, 400])
        ports = rng.sample(range(1, 65536), count)
        scan(rng.randrange(86400 - 600), ports, rng.choice([20, 120, 300]))
    for _ in range(6 * per_million):  # near misses: 29 ports
        scan(rng.randrange(86400 - 600) // 600 * 600 + 10, rng.sample(range(1024, 65536), 29), 500)
    for _ in range(4 * per_million):  # straddling a bin edge: 20 ports either side, no finding
        edge = rng.randrange(1, 144) * 600
        server, cip = rng.choice(SERVERS), f"45.9.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        scan(edge - 60, list(range(7000, 7020)), 60, server, cip)
        scan(edge, list(range(7020, 7040)), 60, server, cip)
    for _ in range(4 * per_million):  # slow scans: 500 ports over 5 hours
        scan(rng.randrange(86400 - 18000), rng.sample(range(1, 65536), 500), 18000)
    for _ in range(3 * per_million):  # repeated ports: 35 ports hit 3 times each in one bin
        scan(rng.randrange(144) * 600, list(range(9000, 9035)) * 3, 590)
    return planted


def generate_rows(rows: int, seed: int = SEED) -> Iterator[Row]:
    """The day's rows in time order (stable for a seed and a row count)."""
    rng = random.Random(seed)
    clients = _clients(rng, max(2000, rows // 40))
    weights = _hour_weights()
    planted = _scans(rng, rows)
    background = rows - len(planted)
    total_weight = sum(weights)
    by_hour: list[list[Row]] = [[] for _ in range(24)]
    for row in planted:
        by_hour[row[0] // 3600].append(row)
    carry: list[Row] = []
    made = 0
    for hour in range(24):
        target = background if hour == 23 else min(background, made + round(background * weights[hour] / total_weight))
        bucket = carry + by_hour[hour]
        carry = []
        while made < target:
            # One browsing session: a burst of requests from one client to one server and port.
            client = (
                clients[min(int(rng.paretovariate(1.2)) - 1, len(clients) - 1)] if rng.random() < 0.2 else rng.choice(clients)
            )
            computer, sip = rng.choice(SERVERS)
            port = 443 if rng.random() < 0.85 else 80
            agent = rng.choice(AGENTS)
            moment = hour * 3600 + rng.randrange(3600)
            for _ in range(min(target - made, 1 + int(rng.expovariate(1 / 11)))):
                status, sub, win32 = rng.choice(STATUSES)
                row = (moment, computer, sip, port, rng.choice(["GET"] * 8 + ["POST", "HEAD"]), rng.choice(STEMS),
                       rng.choice(QUERIES), rng.choice(USERS), client, agent, status, sub, win32,
                       rng.randrange(1, 3000))  # fmt: skip
                (bucket if moment < (hour + 1) * 3600 or hour == 23 else carry).append(row)
                made += 1
                moment = min(moment + rng.randrange(0, 6), 86399)
        bucket.sort(key=lambda r: r[0])
        yield from bucket


def write_day(rows: int, data: Path = DATA, seed: int = SEED) -> tuple[Path, Path]:
    """Write day-<rows>.jsonl and iis-<rows>/W3SVC1/u_ex261126.log unless they exist already."""
    data.mkdir(parents=True, exist_ok=True)
    jsonl = data / f"day-{rows}.jsonl"
    iis = data / f"iis-{rows}" / "W3SVC1" / "u_ex261126.log"
    if jsonl.exists() and iis.exists():
        return jsonl, iis
    iis.parent.mkdir(parents=True, exist_ok=True)
    stamps = [(DAY + timedelta(seconds=s)) for s in range(86400)]
    iso = [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in stamps]
    w3c = [s.strftime("%Y-%m-%d %H:%M:%S") for s in stamps]
    partial_jsonl, partial_iis = jsonl.with_suffix(".tmp"), iis.with_suffix(".tmp")
    with partial_jsonl.open("wb") as out_json, partial_iis.open("w", encoding="utf-8", newline="\r\n") as out_iis:
        out_iis.write(
            f"#Software: Microsoft Internet Information Services 10.0\n#Version: 1.0\n#Date: {w3c[0]}\n#Fields: {IIS_FIELDS}\n"
        )
        for second, computer, sip, port, method, stem, query, user, cip, agent, status, sub, win32, taken in generate_rows(
            rows, seed
        ):
            out_json.write(
                orjson.dumps(
                    {
                        "TimeGenerated": iso[second],
                        "Computer": computer,
                        "sSiteName": "W3SVC1",
                        "sIP": sip,
                        "sPort": port,
                        "csMethod": method,
                        "csUriStem": stem,
                        "csUriQuery": query,
                        "csUserName": user,
                        "cIP": cip,
                        "csUserAgent": agent,
                        "csReferer": "-",
                        "scStatus": status,
                        "scSubStatus": sub,
                        "scWin32Status": win32,
                        "TimeTaken": taken,
                    }
                )
                + b"\n"
            )
            out_iis.write(
                f"{w3c[second]} W3SVC1 {sip} {method} {stem} {query} {port} {user} {cip} {agent} - "
                f"{status} {sub} {win32} {taken}\n"
            )
    partial_jsonl.replace(jsonl)
    partial_iis.replace(iis)
    return jsonl, iis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per day (repeatable); default 1000000 and 4000000")
    args = parser.parse_args()
    for rows in args.rows or [1_000_000, 4_000_000]:
        jsonl, iis = write_day(rows)
        print(f"{rows} rows: {jsonl} ({jsonl.stat().st_size / 1e6:.0f} MB), {iis} ({iis.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
