"""Seeded generator of one W3CIISLog day for every benchmark, written in each input shape the detector meets.

    python benchmarks/generate.py --rows 100000           # writes benchmarks/data/w3ciislog-100000/

A day is background traffic (browsing sessions of many clients: bursts of requests to ports 80/443 of
six web servers and four IIS sites, busier in the afternoon) plus planted port scanners: scans of
30-400 ports within a few minutes (some straddling a bin edge), near misses of 29 ports, slow scanners
that spread their ports over hours, and scanners that come back with repeated ports.

The same rows are written as
- ordered.jsonl   JSON Lines in time order, one object per row with the columns of a W3CIISLog query
                  result (the table's columns plus TenantId, SourceSystem, Type, ...);
- shuffled.jsonl  the same lines in no particular order (a seeded random permutation), as a Log
                  Analytics export or query result gives them;
- response.json   the shuffled rows as a saved Log Analytics query response body, exactly the API's
                  wire form: {"tables":[{"name":"PrimaryResult","columns":[{"name","type"}],"rows":[[...]]}]}
                  on one line, column types as the W3CIISLog table reference gives them (TimeGenerated
                  datetime, sPort int, TimeTaken/scBytes/csBytes long, the status columns string);
- array.json      the shuffled rows, in the same order, as `az monitor log-analytics query` output saved to a
                  file: a JSON array of one object per row, each the row's columns and an extra
                  "TableName": "PrimaryResult" member, printed as az's JSON output prints (knack's
                  format_json: json.dumps(rows, ensure_ascii=False, indent=2, sort_keys=True) + "\n");
- iis-single/     IIS W3C logs in time order, one folder per site (W3SVC1..W3SVC4) with one
                  u_ex261126.log each, and one directive block (#Software, #Version, #Date, #Fields) per file;
- iis-many/       the same entries in the same file names, but a new directive block every 1 to
                  --max-block entries (seeded), as a low-traffic IIS server writes one each time it
                  reopens its log after being idle.
Every value is one an IIS log can carry (no spaces, "-" for a missing value), so the IIS files hold
exactly the JSON rows' values; the columns IIS does not log (Computer, which the IIS source takes from
--computer, and the Log Analytics columns) are the only difference. manifest.json, written last, says
what was written; a folder without it (an interrupted run) is generated again. A day written before
array.json existed, or with an older form of it, is completed from its shuffled.jsonl (the other shapes
are kept). Same seed, row count and --max-block: same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

DATA = Path(__file__).resolve().parent / "data"
SEED = 20261127
VERSION = 2  # bump when the bytes written for a seed and row count change (array.json aside)
ARRAY_VERSION = 2  # bump when array.json's bytes change: cached days then rewrite it alone, from shuffled.jsonl
DAY = datetime(2026, 11, 26, tzinfo=UTC)
IIS_FILE = "u_ex261126.log"
START, END = "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"  # the day, as a --start/--end window
MAX_BLOCK = 8  # iis-many: a directive block every 1..MAX_BLOCK entries (the real folder in mind averages 3.4)
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
SITES = ["W3SVC1", "W3SVC2", "W3SVC3", "W3SVC4"]
SITE_WEIGHTS = [70, 20, 7, 3]  # one busy site, one medium, two quiet ones
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
# The columns of a W3CIISLog query result and their types as the API declares them. The IIS fields off
# by default (s-computername, cs-host, cs(Cookie), cs-version, sc-bytes, cs-bytes) are empty: "" for
# strings (KQL strings have no null), null for numbers.
TENANT = "0a1b2c3d-0000-4000-8000-00000000feed"
RESULT_COLUMNS: list[tuple[str, str]] = [
    ("TenantId", "string"),
    ("SourceSystem", "string"),
    ("TimeGenerated", "datetime"),
    ("MG", "string"),
    ("ManagementGroupName", "string"),
    ("Computer", "string"),
    ("sSiteName", "string"),
    ("sComputerName", "string"),
    ("sIP", "string"),
    ("csMethod", "string"),
    ("csUriStem", "string"),
    ("csUriQuery", "string"),
    ("sPort", "int"),
    ("csUserName", "string"),
    ("cIP", "string"),
    ("csVersion", "string"),
    ("csUserAgent", "string"),
    ("csCookie", "string"),
    ("csReferer", "string"),
    ("csHost", "string"),
    ("scStatus", "string"),
    ("scSubStatus", "string"),
    ("scWin32Status", "string"),
    ("scBytes", "long"),
    ("csBytes", "long"),
    ("TimeTaken", "long"),
    ("Type", "string"),
    ("_ResourceId", "string"),
]
# A row: (second of the day, Computer, site, sIP, sPort, method, stem, query, user, cIP, agent, status, sub, win32, taken)
Row = tuple[int, str, str, str, int, str, str, str, str, str, str, str, str, str, int]


@dataclass(frozen=True)
class Day:
    """Where one generated day's shapes are."""

    rows: int
    folder: Path

    @property
    def ordered(self) -> Path:
        return self.folder / "ordered.jsonl"

    @property
    def shuffled(self) -> Path:
        return self.folder / "shuffled.jsonl"

    @property
    def response(self) -> Path:
        return self.folder / "response.json"

    @property
    def array(self) -> Path:
        return self.folder / "array.json"

    @property
    def iis_single(self) -> Path:
        return self.folder / "iis-single"

    @property
    def iis_many(self) -> Path:
        return self.folder / "iis-many"

    @property
    def manifest(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.folder / "manifest.json").read_text(encoding="utf-8"))
        return loaded


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


# Quiet at night, busiest mid-afternoon (UTC).
HOUR_WEIGHTS = [0.3, 0.25, 0.2, 0.2, 0.25, 0.35, 0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.35, 1.4, 1.4, 1.35, 1.3, 1.2, 1.1,
                1.0, 0.8, 0.6, 0.4]  # fmt: skip


def _scans(rng: random.Random, rows: int) -> list[Row]:
    """Planted scanners; about 0.5% of the day's rows."""
    planted: list[Row] = []
    per_million = max(1, rows // 1_000_000)

    def scan(start: int, ports: list[int], spread: int, server: tuple[str, str] | None = None, cip: str = "") -> None:
        computer, sip = server or rng.choice(SERVERS)
        site = rng.choices(SITES, SITE_WEIGHTS)[0]
        client = cip or f"45.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        agent = rng.choice(SCAN_AGENTS)
        for port in ports:
            status, sub, win32 = rng.choice(SCAN_STATUSES)
            query = rng.choice(["-", "-", "a=%27+OR+1%3D1--", "cmd=%2Fbin%2Fsh", "x=%zz%4", "bad=%E2%82"])
            planted.append(
                (start + rng.randrange(spread), computer, site, sip, port, rng.choice(["GET", "HEAD", "OPTIONS"]), "/", query,
                 "-", client, agent, status, sub, win32, rng.randrange(1, 50))
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
    planted = _scans(rng, rows)
    if len(planted) > rows:
        raise ValueError(f"--rows must be at least {len(planted)} (the planted scanners alone)")
    background = rows - len(planted)
    total_weight = sum(HOUR_WEIGHTS)
    by_hour: list[list[Row]] = [[] for _ in range(24)]
    for row in planted:
        by_hour[row[0] // 3600].append(row)
    carry: list[Row] = []
    made = 0
    for hour in range(24):
        target = background if hour == 23 else min(background, made + round(background * HOUR_WEIGHTS[hour] / total_weight))
        bucket = carry + by_hour[hour]
        carry = []
        while made < target:
            # One browsing session: a burst of requests from one client to one server, site and port.
            client = (
                clients[min(int(rng.paretovariate(1.2)) - 1, len(clients) - 1)] if rng.random() < 0.2 else rng.choice(clients)
            )
            computer, sip = rng.choice(SERVERS)
            site = rng.choices(SITES, SITE_WEIGHTS)[0]
            port = 443 if rng.random() < 0.85 else 80
            agent = rng.choice(AGENTS)
            moment = hour * 3600 + rng.randrange(3600)
            for _ in range(min(target - made, 1 + int(rng.expovariate(1 / 11)))):
                status, sub, win32 = rng.choice(STATUSES)
                row = (moment, computer, site, sip, port, rng.choice(["GET"] * 8 + ["POST", "HEAD"]), rng.choice(STEMS),
                       rng.choice(QUERIES), rng.choice(USERS), client, agent, status, sub, win32,
                       rng.randrange(1, 3000))  # fmt: skip
                (bucket if moment < (hour + 1) * 3600 or hour == 23 else carry).append(row)
                made += 1
                moment = min(moment + rng.randrange(0, 6), 86399)
        bucket.sort(key=lambda r: r[0])
        yield from bucket


def _json_line(row: Row, iso: list[str]) -> bytes:
    second, computer, site, sip, port, method, stem, query, user, cip, agent, status, sub, win32, taken = row
    record = {
        "TenantId": TENANT,
        "SourceSystem": "OpsManager",
        "TimeGenerated": iso[second],
        "MG": "00000000-0000-0000-0000-000000000002",
        "ManagementGroupName": "AOI-" + TENANT,
        "Computer": computer,
        "sSiteName": site,
        "sComputerName": "",
        "sIP": sip,
        "csMethod": method,
        "csUriStem": stem,
        "csUriQuery": query,
        "sPort": port,
        "csUserName": user,
        "cIP": cip,
        "csVersion": "",
        "csUserAgent": agent,
        "csCookie": "",
        "csReferer": "-",
        "csHost": "",
        "scStatus": status,
        "scSubStatus": sub,
        "scWin32Status": win32,
        "scBytes": None,
        "csBytes": None,
        "TimeTaken": taken,
        "Type": "W3CIISLog",
        "_ResourceId": "",
    }
    return orjson.dumps(record) + b"\n"


def _array_element(record: dict[str, Any], first: bool) -> bytes:
    """One row of array.json with its separator: the bytes json.dumps(rows, indent=2, sort_keys=True) has for it."""
    indented = orjson.dumps([{"TableName": "PrimaryResult", **record}], option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return (b"\n" if first else b",\n") + indented[len(b"[\n") : -len(b"\n]")]


def _iis_entry(row: Row, w3c: list[str]) -> bytes:
    second, _computer, site, sip, port, method, stem, query, user, cip, agent, status, sub, win32, taken = row
    return (
        f"{w3c[second]} {site} {sip} {method} {stem} {query} {port} {user} {cip} {agent} - {status} {sub} {win32} {taken}\r\n"
    ).encode()


def _iis_directives(moment: str) -> bytes:
    return (
        "#Software: Microsoft Internet Information Services 10.0\r\n#Version: 1.0\r\n"
        f"#Date: {moment}\r\n#Fields: {IIS_FIELDS}\r\n"
    ).encode()


def day_folder(rows: int, data: Path = DATA) -> Path:
    return data / f"w3ciislog-{rows}"


def write_day(rows: int, data: Path = DATA, seed: int = SEED, max_block: int = MAX_BLOCK) -> Day:
    """Write every shape of the day into day_folder(rows), unless a complete one of this version is there."""
    day = Day(rows, day_folder(rows, data))
    try:
        manifest = day.manifest
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("version") == VERSION and manifest.get("seed") == seed and manifest.get("max_block") == max_block:
        if manifest.get("array_version") != ARRAY_VERSION:
            _complete_array(day, manifest)
        return day
    partial = day.folder.with_name(day.folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    blocks = _write_shapes(Day(rows, partial), seed, max_block)
    _write_manifest(partial, rows, seed, max_block, blocks)
    shutil.rmtree(day.folder, ignore_errors=True)
    partial.rename(day.folder)
    return day


def _write_manifest(folder: Path, rows: int, seed: int, max_block: int, blocks: int) -> None:
    """manifest.json: what the folder holds, written under a temporary name and renamed into place."""
    manifest = {
        "version": VERSION,
        "seed": seed,
        "rows": rows,
        "max_block": max_block,
        "array_version": ARRAY_VERSION,
        "sites": SITES,
        "iis_many_blocks": blocks,
        "bytes": {
            p.name: p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            for p in sorted(folder.iterdir())
            if not p.name.startswith("manifest.json")
        },
    }
    written = folder / "manifest.json.partial"
    written.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    written.replace(folder / "manifest.json")


def _write_shapes(day: Day, seed: int, max_block: int) -> int:
    """Write all six shapes; returns the number of directive blocks in iis-many."""
    stamps = [DAY + timedelta(seconds=s) for s in range(86400)]
    iso = [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in stamps]
    w3c = [s.strftime("%Y-%m-%d %H:%M:%S") for s in stamps]
    # Separate generators, so the rows do not depend on how they are shuffled or where blocks start.
    shuffle_rng, block_rng = random.Random(seed + 1), random.Random(seed + 2)
    # External shuffle: each line goes to a random bucket file, each bucket is shuffled in memory and the
    # buckets are concatenated, which is a uniform random permutation in bounded memory.
    bucket_count = max(1, day.rows // 100_000)
    buckets = [(day.folder / f"bucket-{i}.tmp").open("wb") for i in range(bucket_count)]
    single: dict[str, IO[bytes]] = {}
    many: dict[str, IO[bytes]] = {}
    left_in_block: dict[str, int] = {}
    blocks = 0
    with day.ordered.open("wb") as ordered:
        for row in generate_rows(day.rows, seed):
            line = _json_line(row, iso)
            ordered.write(line)
            buckets[shuffle_rng.randrange(bucket_count)].write(line)
            site = row[2]
            entry = _iis_entry(row, w3c)
            if site not in single:
                for root, handles in ((day.iis_single, single), (day.iis_many, many)):
                    (root / site).mkdir(parents=True, exist_ok=True)
                    handles[site] = (root / site / IIS_FILE).open("wb")
                single[site].write(_iis_directives(w3c[row[0]]))
                left_in_block[site] = 0
            single[site].write(entry)
            if left_in_block[site] == 0:
                many[site].write(_iis_directives(w3c[row[0]]))
                left_in_block[site] = block_rng.randint(1, max_block)
                blocks += 1
            many[site].write(entry)
            left_in_block[site] -= 1
    for handle in [*buckets, *single.values(), *many.values()]:
        handle.close()
    names = [name for name, _ in RESULT_COLUMNS]
    header = {"name": "PrimaryResult", "columns": [{"name": n, "type": t} for n, t in RESULT_COLUMNS]}
    opening = orjson.dumps({"tables": [header]})[: -len(b"}]}")] + b',"rows":['
    with day.shuffled.open("wb") as shuffled, day.response.open("wb") as response, day.array.open("wb") as array:
        response.write(opening)
        array.write(b"[")
        first = True
        for i in range(bucket_count):
            path = day.folder / f"bucket-{i}.tmp"
            lines = path.read_bytes().splitlines(keepends=True)
            path.unlink()
            shuffle_rng.shuffle(lines)
            shuffled.writelines(lines)
            for line in lines:
                record = orjson.loads(line)
                response.write((b"" if first else b",") + orjson.dumps([record[n] for n in names]))
                array.write(_array_element(record, first))
                first = False
        response.write(b"]}]}")
        array.write(b"]\n" if first else b"\n]\n")
    return blocks


def _complete_array(day: Day, manifest: dict[str, Any]) -> None:
    """Write array.json of a cached day from its shuffled.jsonl (the same rows in the same order), line by line.

    array.json and then manifest.json are each written under a temporary name and renamed into place, so an
    interrupted run leaves the manifest as it was (without this array_version), and the next run writes
    array.json again. The result is byte for byte the folder a fresh run writes.
    """
    partial = day.array.with_name(day.array.name + ".partial")
    with day.shuffled.open("rb") as shuffled, partial.open("wb") as array:
        array.write(b"[")
        first = True
        for line in shuffled:
            array.write(_array_element(orjson.loads(line), first))
            first = False
        array.write(b"]\n" if first else b"\n]\n")
    partial.replace(day.array)
    _write_manifest(day.folder, day.rows, manifest["seed"], manifest["max_block"], manifest["iis_many_blocks"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per day (repeatable); default 100000")
    parser.add_argument("--max-block", type=int, default=MAX_BLOCK, help="iis-many: most entries per directive block")
    args = parser.parse_args()
    for rows in args.rows or [100_000]:
        day = write_day(rows, max_block=args.max_block)
        sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in day.manifest["bytes"].items())
        print(f"{rows} rows in {day.folder}: {sizes}; iis-many has {day.manifest['iis_many_blocks']} directive blocks")


if __name__ == "__main__":
    main()
