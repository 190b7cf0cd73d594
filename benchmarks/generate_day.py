"""Deterministic generator of one day of W3CIISLog rows (default 1,000,000) with a few planted scanners.

`python benchmarks/generate_day.py [--rows N]` writes benchmarks/data/w3ciislog_day_<N>.parquet
(gitignored). Background traffic: 25,000 clients on 20 servers, ports 80/443 with a little 8080/8443,
so no background group comes near 30 distinct ports. Planted, with the findings they must produce
(`EXPECTED`, derived from how they are built, not by running the detector):
  S1 one client sweeps ports 1-1000 of web03 in the 02:00 bin                 -> 1 finding (portCount 128)
  S2 one client probes 40 ports on each of web01-web05 in the 09:30 bin       -> 5 findings
  S3 a slow IPv6 scanner, 35 ports per bin on web07, 14:00-15:00 (6 bins)     -> 6 findings
  S4 a near miss: 29 ports per bin on web02 for 20 bins                       -> none
  S5 a scan split by a bin edge: 20 ports at 11:09, 20 more at 11:10          -> none
  S6 a noisy scanner: 5,000 requests over 60 ports of web10 in the 20:00 bin  -> 1 finding
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow

DATA = Path(__file__).resolve().parent / "data"
DAY = datetime(2026, 11, 26, tzinfo=UTC)
SERVERS = 20
CLIENTS = 25_000
COLUMNS = (
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
    "TimeTaken",
)
# (bin start, cIP, Computer, sIP, portCount, ConnectionsCount) of every finding the data must produce.
EXPECTED: list[tuple[datetime, str, str, str, int, int]] = []


def computer(n: int) -> str:
    return f"web{n:02d}.contoso.com"


def server_ip(n: int) -> str:
    return f"10.0.1.{n}"


def planted() -> list[tuple[Any, ...]]:
    """The scanner rows, and EXPECTED filled in."""
    rows: list[tuple[Any, ...]] = []
    EXPECTED.clear()

    def row(
        moment: datetime, cip: str, server: int, port: int, agent: str = "Mozilla/5.0+(compatible;+Nmap+Scripting+Engine)"
    ) -> None:
        rows.append(
            (
                moment,
                computer(server),
                "Default Web Site",
                server_ip(server),
                port,
                "GET",
                "/",
                "-",
                "-",
                cip,
                agent,
                "404",
                "0",
                "2",
                3,
            )
        )

    # S1
    start = DAY + timedelta(hours=2)
    for port in range(1, 1001):
        row(start + timedelta(milliseconds=port * 500), "203.0.113.10", 3, port)
    EXPECTED.append((start, "203.0.113.10", computer(3), server_ip(3), 128, 1000))
    # S2
    start = DAY + timedelta(hours=9, minutes=30)
    for server in range(1, 6):
        for port in range(3000, 3040):
            row(start + timedelta(seconds=server * 60 + port - 3000), "203.0.113.20", server, port)
        EXPECTED.append((start, "203.0.113.20", computer(server), server_ip(server), 40, 40))
    # S3
    for b in range(6):
        start = DAY + timedelta(hours=14, minutes=10 * b)
        for port in range(35):
            row(start + timedelta(seconds=port * 15), "2001:db8::5", 7, 5000 + b * 100 + port)
        EXPECTED.append((start, "2001:db8::5", computer(7), server_ip(7), 35, 35))
    # S4
    for b in range(20):
        start = DAY + timedelta(hours=4, minutes=10 * b)
        for port in range(29):
            row(start + timedelta(seconds=port * 20), "198.51.100.77", 2, 6000 + port)
    # S5
    for port in range(20):
        row(DAY + timedelta(hours=11, minutes=9, seconds=30 + port), "203.0.113.30", 4, 7000 + port)
        row(DAY + timedelta(hours=11, minutes=10, seconds=port), "203.0.113.30", 4, 7020 + port)
    # S6
    start = DAY + timedelta(hours=20)
    for i in range(5000):
        row(start + timedelta(milliseconds=i * 100), "203.0.113.40", 10, 9000 + i % 60)
    EXPECTED.append((start, "203.0.113.40", computer(10), server_ip(10), 60, 5000))
    return rows


def generate(total: int, path: Path) -> Path:
    """Write `total` rows (background + planted) to a Parquet file."""
    scans = planted()
    background = total - len(scans)
    if background < 0:
        raise ValueError(f"--rows must be at least {len(scans)}")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    con.execute(
        """
        CREATE TABLE rows AS
        WITH r AS (SELECT i, hash(i) AS h1, hash(i + 1000000007) AS h2, hash(i + 2000000011) AS h3 FROM range(?) t(i))
        SELECT
            ?::TIMESTAMPTZ + to_microseconds((h1 % 86400000000)::BIGINT) AS TimeGenerated,
            'web' || lpad(((h2 % ?) + 1)::VARCHAR, 2, '0') || '.contoso.com' AS Computer,
            'Default Web Site' AS sSiteName,
            '10.0.1.' || ((h2 % ?) + 1)::VARCHAR AS sIP,
            ([80, 443, 443, 443, 443, 443, 443, 443, 8080, 8443])[1 + (h3 % 10)::INTEGER]::INTEGER AS sPort,
            (['GET', 'GET', 'GET', 'POST', 'HEAD'])[1 + ((h3 // 10) % 5)::INTEGER] AS csMethod,
            (['/', '/index.html', '/api/orders', '/login', '/static/app.js'])[1 + ((h3 // 50) % 5)::INTEGER] AS csUriStem,
            (['-', '-', 'id=' || (h1 % 9973)::VARCHAR, 'q=a+b%20c'])[1 + ((h3 // 250) % 4)::INTEGER] AS csUriQuery,
            (['-', '-', '-', 'CONTOSO\\alice'])[1 + ((h3 // 1000) % 4)::INTEGER] AS csUserName,
            '198.18.' || (((h2 // 20) % ?) // 256)::VARCHAR || '.' || (((h2 // 20) % ?) % 256)::VARCHAR AS cIP,
            (['Mozilla/5.0+(Windows+NT+10.0;+Win64;+x64)', 'curl/8.4.0', '-', 'Mozilla/5.0+(iPhone)'])
                [1 + ((h3 // 4000) % 4)::INTEGER] AS csUserAgent,
            (['200', '200', '200', '304', '404', '401'])[1 + ((h3 // 16000) % 6)::INTEGER] AS scStatus,
            '0' AS scSubStatus,
            (['0', '0', '0', '64', '1236'])[1 + ((h3 // 96000) % 5)::INTEGER] AS scWin32Status,
            (h1 % 900)::BIGINT AS TimeTaken
        FROM r
        """,
        [background, DAY, SERVERS, SERVERS, CLIENTS, CLIENTS],
    )
    planted_rows = pyarrow.Table.from_pylist([dict(zip(COLUMNS, r, strict=True)) for r in scans])
    con.register("planted_rows", planted_rows)
    con.execute(f"INSERT INTO rows ({columns}) SELECT {columns} FROM planted_rows")  # noqa: S608 - constant column names
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY (SELECT {columns} FROM rows ORDER BY TimeGenerated) TO '{path}' (FORMAT parquet)")  # noqa: S608
    return path


def data_path(total: int) -> Path:
    return DATA / f"w3ciislog_day_{total}.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    path = generate(args.rows, data_path(args.rows))
    print(f"{args.rows} rows ({len(EXPECTED)} planted findings) written to {path}")


if __name__ == "__main__":
    main()
