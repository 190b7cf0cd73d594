"""Held-out check: a W3CIISLog day unlike generate.py's, in every input shape, our CLI against DuckDB.

    python benchmarks/heldout.py --rows 50000 --probe     # what the detector does with each planted malformed record
    python benchmarks/heldout.py --rows 50000             # a quick try
    python benchmarks/heldout.py --rows 1000000           # the size the performance goals are set at

The day (2026-11-24, seeded, written under benchmarks/data/heldout-<rows>/ and reused while its
manifest matches) is its own traffic model, written without reading generate.py's:
- background: ~40k clients (IPv4, IPv6 in mixed case, IPv4-mapped ::ffff:a.b.c.d) on ~240 servers
  (FQDNs, an upper-case twin, a non-ASCII name; 1 to 3 server IPs each, some shared by several servers),
  up to 12 sites each, every server listening on 80/443 and 0 to 45 ports spread over 1024-65535;
  traffic peaks at 09:00 and 20:00 UTC with a 02:00 batch hour;
- monitoring clients probing 24 to 33 ports of a server within a minute or two, wherever the minute
  falls (so many checks straddle a 10-minute bin edge): near misses by the thousand and real findings;
- planted groups whose outcome turns on one row: exactly 29/30/31 ports; scans split 29/29, 30/5,
  15/30 at a bin edge with a row at edge-100ns and one at the edge; a row at the window's start, at
  start-100ns, at end-100ns, at the end (in Z and +01:00 forms); one client on many servers, on two
  server IPs of one server, under two spellings of one IPv6 address or of one server name, as
  1.2.3.4 and ::ffff:1.2.3.4; cIP, Computer or sIP null or ""; ports 0, -1, 65535, 2^31, 2^40; "443"
  next to 443; ports written " 8080", "+81", "0443", 82.0; null ports ("-", "", null); sweeps of 300
  ports with 200 user names (the 128 cap); user agents with \\u00e9, \\", \\n, a NUL, and a lone
  surrogate next to its U+FFFD; every detail column null or absent; duplicate keys (json keeps the last);
  keys written with a \\u escape; ports 8.1e1, 1E3, -0, 443.00; cIP 16909060 as a number beside the
  same text; Computer true; a 9 MB user agent (a line longer than a reader's block);
- TimeGenerated in fourteen forms: ...1234567Z, ...Z, +00:00, a space for T, +05:30/-08:00/+01:00,
  no offset, milliseconds, basic (20261124T101500Z), minutes only, a space and seven digits, a comma
  fraction, +0530 without a colon, spaces and a tab around it, an ISO week date (2026-W48-2T...);
- malformed records, each carrying the port that would make a 29-port group fire (or a row a firing
  group would count): not JSON, an array or null or a string line, NaN, a 5,000-digit port, a port
  "http"/1.5/true/2^63, a time "yesterday"/lower-case t and z/null/a number/year 1 at +01:00, cIP an
  object, a user agent a list or nested 3,000 deep, sPort or Computer missing; arrays and responses
  get their own (a non-object element; a row as an object, too short, too long); the JSON Lines file
  ends in a cut line without its line break. --probe runs each kind alone, against a control, on
  both paths, before anyone trusts the big run.

Shapes: rows.jsonl (shuffled, CRLF, a BOM, blank lines, keys in several orders, ASCII-escaped and raw
UTF-8 lines); response.json (one line, the API's wire form) and response-pretty.json
(the same body as `az rest` prints it, json's indent 2); array.json (what `az monitor log-analytics
query -o json` prints: indent 2, sorted keys, "TableName"); response-clean.json and array-clean.json
(the same rows with only the malformed records their first pass reads through: any other sends the
whole file to the plain read, so without them their fast path would go unchecked); iis/ (W3SVC1..W3SVC12, u_ex261123/24/25.log,
CRLF, one big single-header site, sites with a #Fields block every 1-20 entries, five layouts: IIS's
default fields, all fields, another order, no date field (#Date gives it), no s-ip; an FTP folder;
malformed entries: a field too many, a port "8o8o", time 24:61:00, a NUL, an entry before any #Fields,
a last line without its line break; valid oddities: NUL padding before an entry, trailing spaces, a
BOM, LF line ends, ports written 00443, the day's first two minutes in the day before's file).

Expected findings are independent of the detector: DuckDB's SQL of the rule (duckdb_anchor.py) over
anchor.jsonl, the good rows' true values written canonically (every column, times as ...ffffffZ), and
over anchor-iis.jsonl, the values the IIS files hold. Our CLI runs on every shape (file:, and iis: with
--computer heldout-iis), and the plain path (plain_run.py, pushdown off) on JSON Lines and IIS (every
shape with --plain-all); each result set is compared with DuckDB's column by column. Wall time, the
child's peak RSS (os.wait4) and the ratio to DuckDB's time on the same rows are printed; rowsRead and
skippedLines from our summary are printed beside the counts the generator planted. The day is written
by a child process: wait4's ru_maxrss of a child counts its parent's peak RSS too (subprocess starts
children with vfork), so the measuring process never holds the day.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import Figures, differences  # noqa: E402

PORT_RULE = "44a555d8-ecee-4a25-95ce-055879b4b14b"
DATA = HERE / "data"
VERSION = 6  # part of the manifest: change it when what is written changes
SEED = 20261124
START, END = "2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"
IIS_COMPUTER = "heldout-iis"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = datetime(2026, 11, 24, tzinfo=UTC)
TICK = 1  # 100 ns, Kusto's resolution
SECOND = 10_000_000
MINUTE = 60 * SECOND
BIN = 10 * MINUTE
DAY_START = (DAY - EPOCH) // timedelta(microseconds=1) * 10  # ticks since the epoch
DAY_END = DAY_START + 144 * BIN

# ---- rows -------------------------------------------------------------------------------------------
# A row's true values, as the detector must type them: (ticks, then the CORE columns), a time form and
# the raw JSON values that differ from the true ones (a port written "443", a lone surrogate, ...).
CORE = (
    "cIP", "Computer", "sIP", "sPort", "sSiteName", "csMethod", "csUriStem", "csUriQuery", "csUserName",
    "csUserAgent", "csReferer", "csHost", "scStatus", "scSubStatus", "scWin32Status", "scBytes", "csBytes", "TimeTaken",
)  # fmt: skip
T, CIP, COMPUTER, SIP, PORT, SITE, METHOD, STEM, QUERY, USER, AGENT, REFERER, HOST = range(13)
STATUS, SUBSTATUS, WIN32, SCBYTES, CSBYTES, TAKEN, FORM, RAW = range(13, 21)
NUMERIC = frozenset({"sPort", "scBytes", "csBytes", "TimeTaken"})
REQUIRED = ("TimeGenerated", "cIP", "Computer", "sIP", "sPort")
# The Log Analytics columns of a W3CIISLog query result, in the response's order, with their types.
LA_COLUMNS = (
    ("TenantId", "string"), ("TimeGenerated", "datetime"), ("sSiteName", "string"), ("sComputerName", "string"),
    ("sIP", "string"), ("csMethod", "string"), ("csUriStem", "string"), ("csUriQuery", "string"), ("sPort", "int"),
    ("csUserName", "string"), ("cIP", "string"), ("csUserAgent", "string"), ("csReferer", "string"),
    ("csHost", "string"), ("scStatus", "string"), ("scSubStatus", "string"), ("scWin32Status", "string"),
    ("scBytes", "long"), ("csBytes", "long"), ("TimeTaken", "long"), ("Computer", "string"),
    ("_ResourceId", "string"), ("FileUri", "string"), ("SourceSystem", "string"), ("MG", "string"),
    ("ManagementGroupName", "string"), ("Type", "string"),
)  # fmt: skip
TENANT = "7d3c2f61-5b1e-4a8e-9c3f-0e6b2a9d4c11"

Row = tuple[Any, ...]


def utc(ticks: int) -> datetime:
    return EPOCH + timedelta(microseconds=ticks // 10)


# ---- TimeGenerated forms: (text, the instant the text means, in microseconds) ---------------------------
def _f_z7(t: int) -> tuple[str, int]:
    d = utc(t)
    return f"{d:%Y-%m-%dT%H:%M:%S}.{t % SECOND:07d}Z", t // 10


def _f_z(t: int) -> tuple[str, int]:
    d = utc(t)
    fraction = f".{d.microsecond:06d}".rstrip("0") if d.microsecond else ""
    return f"{d:%Y-%m-%dT%H:%M:%S}{fraction}Z", t // 10


def _f_plus(t: int) -> tuple[str, int]:
    return utc(t).isoformat(), t // 10


def _f_space(t: int) -> tuple[str, int]:
    return str(utc(t)), t // 10


_ZONES = (timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=1)))


def _f_offset(t: int) -> tuple[str, int]:
    return utc(t).astimezone(_ZONES[(t // SECOND) % 3]).isoformat(), t // 10


def _f_naive(t: int) -> tuple[str, int]:
    return utc(t).replace(tzinfo=None).isoformat(), t // 10


def _f_ms(t: int) -> tuple[str, int]:
    d = utc(t)
    return f"{d:%Y-%m-%dT%H:%M:%S}.{d.microsecond // 1000:03d}Z", t // 10_000 * 1000


def _f_basic(t: int) -> tuple[str, int]:
    return f"{utc(t):%Y%m%dT%H%M%S}Z", t // SECOND * 1_000_000


def _f_minute(t: int) -> tuple[str, int]:
    return f"{utc(t):%Y-%m-%dT%H:%M}Z", t // MINUTE * 60_000_000


def _f_space7(t: int) -> tuple[str, int]:
    d = utc(t)
    return f"{d:%Y-%m-%d %H:%M:%S}.{t % SECOND:07d}Z", t // 10


def _f_comma(t: int) -> tuple[str, int]:
    d = utc(t)
    return f"{d:%Y-%m-%dT%H:%M:%S},{d.microsecond:06d}Z", t // 10


def _f_compact_offset(t: int) -> tuple[str, int]:
    return utc(t).astimezone(_ZONES[(t // SECOND) % 3]).strftime("%Y-%m-%dT%H:%M:%S.%f%z"), t // 10


def _f_padded(t: int) -> tuple[str, int]:
    return f" {_f_z7(t)[0]}\t", t // 10


def _f_week(t: int) -> tuple[str, int]:
    d = utc(t)
    year, week, weekday = d.isocalendar()
    return f"{year}-W{week:02d}-{weekday}T{d:%H:%M:%S}.{d.microsecond:06d}Z", t // 10


FORMS: tuple[Callable[[int], tuple[str, int]], ...] = (
    _f_z7, _f_z, _f_plus, _f_space, _f_offset, _f_naive, _f_ms, _f_basic, _f_minute, _f_space7,
    _f_comma, _f_compact_offset, _f_padded, _f_week,
)  # fmt: skip
FORM_WEIGHTS = (35, 15, 10, 10, 8, 5, 7, 2, 2, 6, 1, 1, 1, 1)
Z7, OFFSET = 0, 4


def canonical_time(us: int) -> str:
    return f"{EPOCH + timedelta(microseconds=us):%Y-%m-%dT%H:%M:%S.%f}Z"


# ---- the world the traffic comes from --------------------------------------------------------------------
@dataclass
class Server:
    name: str
    sips: list[str]
    sites: list[str]
    ports: list[int]


STEMS = ("/", "/index.html", "/api/v2/orders", "/login.aspx", "/owa/auth.owa", "/static/app.js", "/health", "/ümlaut/página")
QUERIES = (
    "", "", "", "", "id=42", "q=caf%C3%A9", "q=a+b", "x=%zz", "bad=%ff%fe", "p=%2541", "s=%E2%82%AC", "u=%F0%9F%98%80",
    "t=%e9", "trail=%", "sp=a%20b", "kv=%3D%26", "ok=1&next=%2Fhome",
)  # fmt: skip
USERS = ("", "", "", "", "", "CONTOSO\\alice", "bob@contoso.com", "Ünal", "svc_backup", "12345", "true", "-", "O'Brien")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "curl/8.10.1", "python-requests/2.32.3", "Go-http-client/1.1", "masscan/1.3.2", "Nmap Scripting Engine",
    'Mozilla/5.0 (compatible; "quoted" bot/2.0)', "Agent é ü 漢字 🚀", "okhttp/4.12.0", "", "",
)  # fmt: skip
METHODS = ("GET",) * 14 + ("POST",) * 4 + ("HEAD", "OPTIONS", "PUT", "DELETE", "PROPFIND", "")
STATUSES = (
    ("200", "0", "0"), ("200", "0", "0"), ("200", "0", "0"), ("304", "0", "0"), ("302", "0", "0"),
    ("401", "2", "5"), ("401", "1", "2148074254"), ("401", "1", "1326"), ("401", "0", "-2146893044"),
    ("403", "4", "0"), ("404", "0", "2"), ("500", "19", "13"), ("503", "0", "1236"), ("401", "", "0x5"),
    ("200", "0", "  64 "), ("401", "5", "3221225578"), ("404", "", ""), ("400", "0", "99999999999999999999"),
)  # fmt: skip
REFERERS = ("", "", "https://www.bing.com/", "https://contoso.com/a?b=c", "-")


def build_world(rng: random.Random, rows: int) -> tuple[list[Server], list[str], list[float]]:
    roles = ("web", "api", "edge", "cdn", "auth", "files", "intranet", "shop")
    regions = ("weu", "neu", "eus", "wus", "sea", "jpe", "brs", "aue")
    shared_sip = "192.168.10.10"  # the same private address behind several servers
    servers: list[Server] = []
    for i in range(240):
        name = f"{roles[i % 8]}-{regions[(i // 8) % 8]}-{i:03d}"
        if i % 7 == 3:
            name += ".corp.contoso.com"
        if i == 17:
            name = "srv-münchen-01"
        if i == 18:
            name = servers[0].name.upper()  # WEB-WEU-000 beside web-weu-000: two Computers
        sips = [f"10.{i // 200}.{i % 200}.{4 + k}" if k % 2 == 0 else f"fd42:{i:x}::{k + 1:x}" for k in range(1 + i % 3)]
        if i % 40 == 5:
            sips.append(shared_sip)
        sites = [f"W3SVC{1 + (i + k * 5) % 12}" for k in range(1 + i % 4)]
        extra = rng.sample(range(1024, 65536), (i * 7) % 46)
        servers.append(Server(name, sips, list(dict.fromkeys(sites)), [80, 443, *extra]))
    clients: list[str] = []
    for i in range(max(2_000, min(40_000, rows // 20))):
        kind = i % 20
        a, b, c, d = rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)
        if kind < 12:
            clients.append(f"{a}.{b}.{c}.{d}")
        elif kind < 18:
            text = f"2001:db8:{b:x}{c:02x}:{d:x}::{rng.randrange(1, 65536):x}"
            clients.append(text.upper() if kind == 17 else text)
        else:
            clients.append(f"::ffff:{a}.{b}.{c}.{d}")
    weights = [1.0 / (1 + k) ** 0.9 for k in range(len(clients))]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    return servers, clients, cumulative


def minute_weights() -> list[float]:
    out = []
    for minute in range(1440):
        h = minute / 60
        w = 0.25 + math.exp(-(((h - 9) / 2.5) ** 2)) + 0.8 * math.exp(-(((h - 20) / 2) ** 2))
        out.append(w + (0.6 if 2 <= h < 3 else 0.0))
    return out


# ---- generation ------------------------------------------------------------------------------------------
@dataclass
class Day:
    rows: list[Row] = field(default_factory=list)
    bad: list[tuple[str, Any]] = field(default_factory=list)  # (kind, raw dict or raw JSON Lines text)
    iis_bad: list[tuple[str, Row]] = field(default_factory=list)  # (kind, the row the entry would be)
    iis_good_extra: list[tuple[str, Row]] = field(default_factory=list)  # valid oddities: (kind, row)


class Generator:
    def __init__(self, rows: int, seed: int) -> None:
        self.target = rows
        self.rng = random.Random(seed)
        self.servers, self.clients, self.client_cw = build_world(self.rng, rows)
        self.homes: dict[str, list[Server]] = {}
        self.day = Day()
        self.attackers = 0

    # -- helpers
    def attacker(self) -> str:
        self.attackers += 1
        n = self.attackers
        kind = n % 3
        if kind == 0:
            return f"203.0.{n // 250 % 250}.{n % 250 + 1}"
        if kind == 1:
            return f"2001:db8:bad:{n:x}::1"
        return f"::ffff:198.51.{n // 250 % 250}.{n % 250 + 1}"

    def detail(self, server: Server) -> tuple[Any, ...]:
        rng = self.rng
        status = rng.choice(STATUSES)
        return (
            rng.choice(server.sites), rng.choice(METHODS), rng.choice(STEMS), rng.choice(QUERIES), rng.choice(USERS),
            rng.choice(AGENTS), rng.choice(REFERERS), f"{server.name.split('.')[0]}.contoso.com", *status,
            rng.randrange(100, 90_000), rng.randrange(50, 4_000), rng.randrange(0, 30_000),
        )  # fmt: skip

    def form(self) -> int:
        return self.rng.choices(range(len(FORMS)), FORM_WEIGHTS)[0]

    def row(
        self, ticks: int, cip: str, server: Server, sip: str, port: int | None, *, form: int | None = None,
        raw: dict[str, Any] | None = None, computer: str | None = None, **values: Any,
    ) -> Row:  # fmt: skip
        detail = list(self.detail(server))
        for name, value in values.items():
            detail[CORE.index(name) - 4] = value
        return (
            ticks, cip, server.name if computer is None else computer, sip, port, *detail,
            self.form() if form is None else form, raw,
        )  # fmt: skip

    def scan(
        self, ports: Iterable[int | None], *, bin_start: int | None = None, cip: str | None = None, server: Server | None = None,
        sip: str | None = None, spread: int = BIN, repeats: int = 0, **kw: Any,
    ) -> tuple[str, Server, str, int]:  # fmt: skip
        """Rows of one client's ports to one server IP within [bin_start, bin_start + spread); returns the group."""
        rng = self.rng
        bin_start = DAY_START + rng.randrange(3, 141) * BIN if bin_start is None else bin_start
        cip = self.attacker() if cip is None else cip
        server = rng.choice(self.servers) if server is None else server
        sip = rng.choice(server.sips) if sip is None else sip
        listed = list(ports)
        listed += [rng.choice(listed) for _ in range(repeats)]
        for port in listed:
            self.day.rows.append(self.row(bin_start + rng.randrange(spread), cip, server, sip, port, **kw))
        return cip, server, sip, bin_start

    def ports(self, k: int) -> list[int]:
        return self.rng.sample(range(1, 65536), k)

    # -- the parts of the day
    def planted(self) -> None:
        rng, rows = self.rng, self.day.rows
        copies = max(2, self.target // 25_000)
        for _ in range(copies):
            for k in (29, 30, 31):
                self.scan(self.ports(k), repeats=rng.randrange(0, 20))
            for a, b in ((29, 29), (30, 5), (15, 30), (20, 20), (30, 30)):
                edge = DAY_START + rng.randrange(3, 141) * BIN
                both = self.ports(a + b)
                first, second = both[:a], both[a:]
                cip, server, sip, _ = self.scan(first[1:], bin_start=edge - 3 * MINUTE, spread=3 * MINUTE)
                rows.append(self.row(edge - TICK, cip, server, sip, first[0], form=Z7))
                self.scan(second[1:], bin_start=edge + TICK, spread=3 * MINUTE, cip=cip, server=server, sip=sip)
                rows.append(self.row(edge, cip, server, sip, second[0], form=Z7))
            self.scan(self.ports(30), form=OFFSET, spread=4 * MINUTE)
            cip = self.attacker()
            bin_start = DAY_START + rng.randrange(3, 141) * BIN
            for server in rng.sample(self.servers, 11):
                self.scan(self.ports(rng.choice((29, 30, 33))), bin_start=bin_start, cip=cip, server=server)
            two = rng.choice([s for s in self.servers if len(s.sips) >= 2])
            cip, _, _, bin_start = self.scan(self.ports(20), server=two, sip=two.sips[0])
            self.scan(self.ports(20), server=two, sip=two.sips[1], cip=cip, bin_start=bin_start)
            self.empty_keys()
            self.odd_ports()
            self.spellings()
            self.surrogates()
            self.scan(self.ports(30), sSiteName="", csMethod="", csUriQuery="", csUserName="", csUserAgent="",
                      scStatus="", scSubStatus="", scWin32Status="")  # fmt: skip
            self.duplicate_keys()
            self.written_oddly()
            self.malformed()
            self.iis_only()
        for _ in range(max(1, self.target // 200_000)):
            users = [f"user{n:04d}" for n in range(200)]
            agents = [f"scanner/{n}.0 (+https://x.example/é)" for n in range(150)]
            queries = [f"probe={n}&x=%2{n % 10}" for n in range(140)]
            cip, server, sip, bin_start = self.attacker(), rng.choice(self.servers), "", DAY_START + rng.randrange(3, 141) * BIN
            sip = rng.choice(server.sips)
            for port in range(1, 301):
                n = port % 200
                rows.append(self.row(bin_start + rng.randrange(BIN), cip, server, sip, port, csUserName=users[n],
                                     csUserAgent=agents[n % 150], csUriQuery=queries[n % 140]))  # fmt: skip
        self.window_edges()
        ports = self.ports(30)
        cip, server, sip, b = self.scan(ports[:29])  # and a line longer than a reader's block:
        self.day.rows.append(self.row(b + 3 * SECOND, cip, server, sip, ports[29], csUserAgent="A" * 9_000_000 + "é"))
        ports = self.ports(30)
        cip, server, sip, b = self.scan(ports[:29])
        last = self.row(b + 3 * SECOND, cip, server, sip, ports[29], form=Z7)
        self.day.bad.append(("jsonl:unterminated", raw_object(last, 0, full=True)))

    def empty_keys(self) -> None:
        server = self.rng.choice(self.servers)
        # cIP null or "" (rendered either way): one group; likewise Computer and sIP.
        _, _, _, b = self.scan(self.ports(30), cip="", server=server)
        self.scan(self.ports(29), cip=self.attacker(), server=server, computer="", bin_start=b)
        self.scan(self.ports(30), server=server, sip="", bin_start=b)

    def odd_ports(self) -> None:
        base = [0, -1, 65535, 2**31, 2**40, *self.ports(25)]
        self.scan(base)  # 30 distinct
        ints = [443, *self.ports(28)]
        cip, server, sip, b = self.scan(ints)  # 29 distinct, and "443" is the same port
        self.day.rows.append(self.row(b + 5 * SECOND, cip, server, sip, 443, raw={"sPort": "443"}))
        written: list[Any] = [" 8080", "+81", "0443", 82.0, "65000", "-", "", None]
        cip, server, sip, b = self.scan(self.ports(26))
        for text in written:
            port = None if text in ("-", "", None) else int(float(str(text).strip()))
            self.day.rows.append(self.row(b + self.rng.randrange(BIN), cip, server, sip, port, raw={"sPort": text}))
        self.scan([*self.ports(29), None, None, None])  # nulls count connections, not ports

    def spellings(self) -> None:
        server = self.rng.choice(self.servers)
        cip, _, sip, b = self.scan(self.ports(20), cip="2001:DB8:AB::1", server=server)
        self.scan(self.ports(20), cip="2001:db8:ab::1", server=server, sip=sip, bin_start=b)
        self.scan(self.ports(20), cip="::ffff:192.0.2.77", server=server, sip=sip, bin_start=b)
        self.scan(self.ports(20), cip="192.0.2.77", server=server, sip=sip, bin_start=b)
        cip = self.attacker()
        self.scan(self.ports(30), cip=cip, server=server, sip=sip, bin_start=b, computer=server.name.upper() + "X")
        self.scan(self.ports(30), cip=cip, server=server, sip=sip, bin_start=b, computer=server.name.lower() + "x")

    def surrogates(self) -> None:
        cip, server, sip, b = self.scan(self.ports(28), csUserAgent="\ufffdx")
        raw = {"csUserAgent": "\ud800x", "_ascii": True}
        self.day.rows.append(self.row(b + SECOND, cip, server, sip, 7, raw=raw, csUserAgent="\ufffdx"))
        odd = {"csUserAgent": 'tab\there\nnew "q" nul\x00é', "csUserName": "\udfff", "_ascii": True}
        self.day.rows.append(self.row(b + 2 * SECOND, cip, server, sip, 8, raw=odd, csUserAgent=odd["csUserAgent"],
                                      csUserName="\ufffd"))  # fmt: skip
        self.scan(self.ports(30), csUserAgent="x" * 5000 + "é")

    def duplicate_keys(self) -> None:
        # JSON Lines only (a dict cannot hold a key twice): json keeps the last value, polars the first.
        ports = self.ports(30)
        cip, server, sip, b = self.scan(ports[:29])
        self.day.rows.append(self.row(b + SECOND, cip, server, sip, ports[0], raw={"_first": ("sPort", ports[29])}))
        cip, server, sip, b = self.scan(ports[:29])
        self.day.rows.append(self.row(b + SECOND, cip, server, sip, ports[29], raw={"_first": ("sPort", ports[0])}))
        cip, server, sip, b = self.scan(ports[:29])
        self.day.rows.append(self.row(b + SECOND, cip, server, sip, ports[29], raw={"_first": ("cIP", "9.9.9.9")}))

    def written_oddly(self) -> None:
        """Valid rows written in ways a reader may trip on; each group fires only when all of them are read."""
        rng, rows = self.rng, self.day.rows
        cip, server, sip, b = self.scan(self.ports(26))
        for literal in ("8.1e1", "1E3", "-0", "443.00"):
            value = int(float(literal))
            rows.append(
                self.row(b + rng.randrange(BIN), cip, server, sip, value, raw={"sPort": float(value), "_literal": literal})
            )
        ports = self.ports(30)
        cip, server, sip, b = self.scan(ports[:27])
        for port, key in zip(ports[27:], ("sPort", "cIP", "TimeGenerated"), strict=True):
            rows.append(self.row(b + rng.randrange(BIN), cip, server, sip, port, raw={"_escape_key": key}))
        server = rng.choice(self.servers)
        sip = server.sips[0]
        b = DAY_START + rng.randrange(3, 141) * BIN
        for k, port in enumerate(self.ports(30)):  # cIP written as a number and as the same text
            raw = {"cIP": 16909060} if k % 2 else None
            rows.append(self.row(b + rng.randrange(BIN), "16909060", server, sip, port, raw=raw))
        b = DAY_START + rng.randrange(3, 141) * BIN
        attacker = self.attacker()
        for port in self.ports(30):
            raw = {"Computer": True} if port % 2 else None
            rows.append(self.row(b + rng.randrange(BIN), attacker, server, sip, port, raw=raw, computer="true"))

    def malformed(self) -> None:
        """Each bad record carries the 30th port of a 29-port group: kept by mistake, it makes a finding."""
        for kind, defect in DICT_DEFECTS.items():
            ports = self.ports(30)
            cip, server, sip, b = self.scan(ports[:29])
            row = self.row(b + 3 * SECOND, cip, server, sip, ports[29], form=Z7)
            self.day.bad.append((kind, defect(raw_object(row, 0, full=True))))
        for kind, defect_line in LINE_DEFECTS.items():
            ports = self.ports(30)
            cip, server, sip, b = self.scan(ports[:29])
            row = self.row(b + 3 * SECOND, cip, server, sip, ports[29], form=Z7)
            self.day.bad.append((kind, defect_line(raw_object(row, 0, full=True))))
        for kind in ("array:number", "array:list", "array:null", "response:object", "response:short", "response:long"):
            ports = self.ports(30)
            cip, server, sip, b = self.scan(ports[:29])
            row = self.row(b + 3 * SECOND, cip, server, sip, ports[29], form=Z7)
            self.day.bad.append((kind, raw_object(row, 0, full=True)))

    def iis_only(self) -> None:
        """Groups of 29 ports and one IIS entry with the 30th: malformed (skipped) or a valid oddity (read)."""
        for kind in IIS_DEFECTS:
            ports = self.ports(30)
            cip, server, sip, b = self.scan(ports[:29], computer=IIS_ONLY, server=self.servers[0], sip="10.0.0.4")
            self.day.iis_bad.append((kind, self.row(b + 3 * SECOND, cip, server, sip, ports[29], computer=IIS_ONLY)))
        for kind in ("nul-padding", "trailing-spaces"):
            ports = self.ports(30)
            cip, server, sip, b = self.scan(ports[:29], computer=IIS_ONLY, server=self.servers[0], sip="10.0.0.4")
            self.day.iis_good_extra.append((kind, self.row(b + 3 * SECOND, cip, server, sip, ports[29], computer=IIS_ONLY)))
        ftp = self.attacker()
        for port in self.ports(40):
            self.day.iis_bad.append(("ftp", self.row(DAY_START + 50 * BIN + port % BIN, ftp, self.servers[0], "10.0.0.4", port)))

    def window_edges(self) -> None:
        rows = self.day.rows
        last_bin, first_bin = DAY_END - BIN, DAY_START
        # (bin, where the 30th port's row is, its form): outside at END and START-100ns, inside at START and END-100ns.
        for bin_start, moment, form in (
            (last_bin, DAY_END, Z7), (last_bin, DAY_END, OFFSET), (first_bin, DAY_START - TICK, Z7),
            (first_bin, DAY_START, Z7), (first_bin, DAY_START, OFFSET), (last_bin, DAY_END - TICK, Z7),
        ):  # fmt: skip
            ports = self.ports(30)
            cip, server, sip, _ = self.scan(ports[:29], bin_start=bin_start)
            rows.append(self.row(moment, cip, server, sip, ports[29], form=form))
        self.scan(self.ports(40), bin_start=DAY_START - BIN)  # the day before: not in the window
        self.scan(self.ports(35), bin_start=DAY_END)  # the day after

    def monitors(self, budget: int) -> None:
        rng, rows = self.rng, self.day.rows
        monitors = [f"10.250.{n // 200}.{n % 200 + 1}" for n in range(40)] + ["fd00:aaaa::10", "::ffff:10.250.9.9"]
        while budget > 0:
            cip, server = rng.choice(monitors), rng.choice(self.servers)
            count = min(len(server.ports), rng.choice((24, 26, 27, 28, 28, 29, 29, 29, 30, 31, 33)))
            sip = rng.choice(server.sips)
            start = DAY_START + rng.randrange(144 * BIN - 2 * MINUTE)
            width = rng.randrange(SECOND, 2 * MINUTE)
            for port in rng.sample(server.ports, count):
                rows.append(self.row(start + rng.randrange(width), cip, server, sip, port, csUserAgent="HealthProbe/3.1",
                                     csMethod="HEAD", csUriStem="/health", csUserName=""))  # fmt: skip
            budget -= count

    def background(self, n: int) -> None:
        rng, rows = self.rng, self.day.rows
        minutes = rng.choices(range(1440), minute_weights(), k=n)
        clients = rng.choices(self.clients, cum_weights=self.client_cw, k=n)
        for minute, cip in zip(minutes, clients, strict=True):
            home = self.homes.get(cip)
            if home is None:
                home = self.homes[cip] = rng.sample(self.servers, rng.choice((1, 1, 1, 2, 2, 3, 4)))
            server = home[0] if len(home) == 1 else rng.choice(home)
            roll = rng.random()
            port: int | None = (443 if roll < 0.6 else 80) if roll < 0.85 else rng.choice(server.ports)
            raw = None
            if roll > 0.995:
                port = None
            elif rng.random() < 0.04:
                raw = {"sPort": str(port)}
            rows.append(self.row(DAY_START + minute * MINUTE + rng.randrange(MINUTE), cip, server, rng.choice(server.sips),
                                 port, raw=raw))  # fmt: skip

    def generate(self) -> Day:
        self.planted()
        planted = len(self.day.rows)
        self.monitors(int(self.target * 0.15))
        self.background(max(0, self.target - len(self.day.rows)))
        self.rng.shuffle(self.day.rows)
        print(f"  {len(self.day.rows):,} rows ({planted:,} planted), {len(self.day.bad)} malformed records, "
              f"{len(self.day.iis_bad)} malformed IIS entries")  # fmt: skip
        return self.day


IIS_ONLY = "iis-only"  # rows written to the IIS folder only (with the constant Computer the IIS source gives)


# ---- rendering: raw JSON values ---------------------------------------------------------------------------
def la_extra(row: Row) -> dict[str, Any]:
    computer = row[COMPUTER] or "unknown"
    return {
        "TenantId": TENANT,
        "sComputerName": computer.split(".")[0].upper()[:15],
        "_ResourceId": f"/subscriptions/0000/resourcegroups/rg-web/providers/microsoft.compute/virtualmachines/{computer}",
        "FileUri": f"C:\\inetpub\\logs\\LogFiles\\{row[SITE] or 'W3SVC1'}\\u_ex261124.log",
        "SourceSystem": "OpsManager",
        "MG": "00000000-0000-0000-0000-000000000002",
        "ManagementGroupName": "AOI-7d3c2f61",
        "Type": "W3CIISLog",
    }


def raw_object(row: Row, index: int, full: bool) -> dict[str, Any]:
    """The row as a JSON object's raw values; `full`: every column (an absent detail becomes null)."""
    text, _ = FORMS[row[FORM]](row[T])
    out: dict[str, Any] = {"TimeGenerated": text}
    out.update(la_extra(row))
    raw = row[RAW] or {}
    for i, name in enumerate(CORE, start=1):
        value = raw[name] if name in raw else row[i]
        if value == "" and name not in NUMERIC:
            choice = (index + i) % 3  # an empty string written as "", as null, or left out
            if choice == 1:
                value = None
            elif choice == 2 and name not in REQUIRED:
                if full:
                    value = None
                else:
                    continue
        if name == "csUserName" and name not in raw and value in ("12345", "true"):
            value = 12345 if value == "12345" else True  # a string column written as a number or a bool
        out[name] = value
    return out


def _json_line(obj: dict[str, Any], row: Row | None, index: int) -> str:
    raw = (row[RAW] or {}) if row is not None else {}
    ascii_only = bool(raw.get("_ascii")) or index % 2 == 0
    separators = (",", ":") if index % 3 == 0 else (", ", ": ")
    if index % 5 == 0:
        obj = dict(reversed(obj.items()))
    elif index % 5 == 1:
        items = list(obj.items())
        obj = dict(items[7:] + items[:7])
    literal = raw.get("_literal")
    if literal:
        obj["sPort"] = "@literal@"
    text = json.dumps(obj, ensure_ascii=ascii_only, separators=separators)
    if literal:
        text = text.replace('"@literal@"', literal)
    escaped = raw.get("_escape_key")
    if escaped:  # the key with one letter as a \u escape: the same key once decoded
        name = str(escaped)
        text = text.replace(f'"{name}":', '"' + name[:-1] + f"\\u{ord(name[-1]):04x}" + '":', 1)
    first = raw.get("_first")
    if first:
        name, value = first
        text = "{" + json.dumps(name) + separators[1] + json.dumps(value) + separators[0] + text[1:]
    return text


# Malformed records the three JSON shapes can all carry: a defect applied to a row's raw object.
def _without(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda o: {k: v for k, v in o.items() if k != name}


def _with(name: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda o: {**o, name: value}


DICT_DEFECTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "port-word": _with("sPort", "http"),
    "port-fraction": _with("sPort", 1.5),
    "port-bool": _with("sPort", True),
    "port-over-int64": _with("sPort", 2**63),
    "time-word": _with("TimeGenerated", "yesterday"),
    "time-lowercase": _with("TimeGenerated", "2026-11-24t10:05:00z"),
    "time-null": _with("TimeGenerated", None),
    "time-number": _with("TimeGenerated", 1795514700),
    "time-out-of-range": _with("TimeGenerated", "0001-01-01T00:30:00+01:00"),
    "cip-object": lambda o: {**o, "cIP": {"v": o["cIP"]}},
    "agent-list": _with("csUserAgent", ["curl", "8"]),
    "port-missing": _without("sPort"),
    "computer-missing": lambda o: {("computer" if k == "Computer" else k): v for k, v in o.items()},
}
# Malformed records a response's or an array's first pass skips itself (any other sends the file to the plain read).
FAST_SAFE = frozenset({"agent-list", "response:object", "response:short", "response:long"})
MISSING_KINDS = frozenset({"port-missing", "computer-missing"})  # a response row cannot lack a column


def _deep(o: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in o.items() if k != "csUserAgent"})
    return text[:-1] + ', "csUserAgent": ' + "[" * 3000 + "]" * 3000 + "}"


# Malformed JSON Lines lines (text).
LINE_DEFECTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "not-json": lambda o: json.dumps(o)[:-7],
    "array-line": lambda o: json.dumps([o]),
    "null-line": lambda o: "null",
    "string-line": lambda o: json.dumps(json.dumps(o)),
    "port-nan": lambda o: json.dumps({**o, "sPort": float("nan")}),
    "port-5000-digits": lambda o: json.dumps(o)[:-1] + ', "sPort": ' + "9" * 5000 + "}",
    "agent-nested-3000": _deep,
}
IIS_DEFECTS = ("field-too-many", "port-word", "time-invalid", "nul-inside", "before-fields", "no-line-break")


def jsonl_bad_line(kind: str, payload: Any) -> str | None:
    if kind == "jsonl:unterminated":
        return None  # written last, by write_jsonl
    if kind in LINE_DEFECTS:
        return str(payload)
    if kind in DICT_DEFECTS:
        return json.dumps(payload)
    return None


def array_bad_element(kind: str, payload: Any) -> str | None:
    if kind in DICT_DEFECTS:
        return json.dumps({**payload, "TableName": "PrimaryResult"}, indent=2, sort_keys=True, ensure_ascii=False)
    if not kind.startswith("array:"):
        return None  # a JSON Lines or response defect
    return {"array:number": "42", "array:list": json.dumps(list(payload.values())), "array:null": "null"}.get(kind)


def response_bad_row(kind: str, payload: Any) -> str | None:
    if kind in MISSING_KINDS or kind in LINE_DEFECTS or kind.startswith(("array:", "jsonl:")):
        return None
    if kind in DICT_DEFECTS:
        return json.dumps([payload.get(name) for name, _ in LA_COLUMNS])
    values = [payload.get(name) for name, _ in LA_COLUMNS]
    return {"response:object": json.dumps(payload), "response:short": json.dumps(values[:-1]),
            "response:long": json.dumps([*values, "extra"])}.get(kind)  # fmt: skip


# ---- writing the shapes ------------------------------------------------------------------------------------
@dataclass
class Written:
    folder: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.folder / name


def _interleave(day: Day, kinds: Callable[[str, Any], str | None], rng: random.Random) -> list[tuple[int, str | None]]:
    """(row index, None) for each row, with (-1, text) for each bad record at a seeded position."""
    items: list[tuple[int, str | None]] = [(i, None) for i in range(len(day.rows))]
    for kind, payload in day.bad:
        text = kinds(kind, payload)
        if text is not None:
            items.insert(rng.randrange(len(items) + 1), (-1, text))
    return items


def write_jsonl(day: Day, path: Path, rng: random.Random) -> int:
    items = _interleave(day, jsonl_bad_line, rng)
    bad = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("\ufeff")
        for n, (index, text) in enumerate(items):
            if index < 0:
                out.write(f"{text}\r\n")
                bad += 1
                continue
            row = day.rows[index]
            out.write(_json_line(raw_object(row, index, full=False), row, index) + "\r\n")
            if n % 50_000 == 7:
                out.write("\r\n   \r\n")  # blank lines are no rows and no malformed lines
        for kind, payload in day.bad:
            if kind == "jsonl:unterminated":  # a file still being written: its last line, cut, is skipped
                out.write(json.dumps(payload)[:-9])
                bad += 1
    return bad


def _array_element(obj: dict[str, Any]) -> str:
    obj["TableName"] = "PrimaryResult"
    try:
        return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # a lone surrogate (orjson refuses it): az would have to escape it
        return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True)


def write_array(day: Day, path: Path, rng: random.Random) -> int:
    items = _interleave(day, array_bad_element, rng)
    for index, _ in items[:2000]:  # orjson's indent is az's json.dumps(indent=2, sort_keys=True, ensure_ascii=False)
        if index >= 0 and not (day.rows[index][RAW] or {}).get("_ascii"):
            obj = {**raw_object(day.rows[index], index, full=True), "TableName": "PrimaryResult"}
            if _array_element(dict(obj)) != json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False):
                raise RuntimeError("orjson's indented output differs from json.dumps'")
    bad = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write("[\n")
        for n, (index, text) in enumerate(items):
            if index < 0:
                bad += 1
            element = text if index < 0 else _array_element(raw_object(day.rows[index], index, full=True))
            out.write(("  " if n == 0 else ",\n  ") + str(element).replace("\n", "\n  "))
        out.write("\n]\n")
    return bad


def write_response(day: Day, path: Path, rng: random.Random, pretty: bool = False) -> int:
    """The API's wire form on one line, or (`pretty`) as `az rest` prints a body: json's indent 2."""
    items = _interleave(day, response_bad_row, rng)
    names = [name for name, _ in LA_COLUMNS]
    columns = [{"name": name, "type": kind} for name, kind in LA_COLUMNS]
    bad = 0
    with path.open("w", encoding="utf-8") as out:
        if pretty:
            head = json.dumps({"tables": [{"name": "PrimaryResult", "columns": columns, "rows": ["@"]}]}, indent=2)
            before, after = head.split('"@"')
            out.write(before.rstrip(" "))
        else:
            out.write('{"tables":[{"name":"PrimaryResult","columns":' + json.dumps(columns, separators=(",", ":")) + ',"rows":[')
        for n, (index, text) in enumerate(items):
            if index < 0:
                bad += 1
                line = json.dumps(json.loads(str(text)), indent=2) if pretty else str(text)
            else:
                row = day.rows[index]
                obj = raw_object(row, index, full=True)
                ascii_only = bool((row[RAW] or {}).get("_ascii"))
                values = [obj[name] for name in names]
                if pretty:
                    line = json.dumps(values, ensure_ascii=ascii_only, indent=2)
                else:
                    line = json.dumps(values, ensure_ascii=ascii_only, separators=(",", ":"))
            if pretty:
                out.write(("        " if n == 0 else ",\n        ") + line.replace("\n", "\n        "))
            else:
                out.write(("" if n == 0 else ",") + line)
        out.write(after + "\n" if pretty else "]}]}")
    return bad


def true_object(row: Row) -> dict[str, Any]:
    _, us = FORMS[row[FORM]](row[T])
    out: dict[str, Any] = {"TimeGenerated": canonical_time(us)}
    out.update(la_extra(row))
    for i, name in enumerate(CORE, start=1):
        out[name] = row[i]
    return out


def in_window(us: int) -> bool:
    return DAY_START // 10 <= us < DAY_END // 10


def write_anchor(day: Day, path: Path) -> int:
    """The good rows' true values, canonically written: what DuckDB reads. Returns the rows in the window."""
    inside = 0
    with path.open("w", encoding="utf-8") as out:
        for row in day.rows:
            if row[COMPUTER] == IIS_ONLY:
                continue
            obj = true_object(row)
            inside += in_window(FORMS[row[FORM]](row[T])[1])
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return inside


# IIS layouts (#Fields), each the fields in the order written.
LAYOUTS = {
    "default": "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) cs(Referer) "
    "sc-status sc-substatus sc-win32-status time-taken",
    "full": "date time s-sitename s-computername s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip "
    "cs-version cs(User-Agent) cs(Cookie) cs(Referer) cs-host sc-status sc-substatus sc-win32-status sc-bytes cs-bytes "
    "time-taken",
    "reordered": "time date c-ip s-ip s-port cs-method cs-uri-stem cs-uri-query sc-status sc-substatus sc-win32-status "
    "cs(user-agent) cs-username s-sitename time-taken",
    "nodate": "time s-sitename s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) "
    "sc-status sc-substatus sc-win32-status",
    "nosip": "date time s-sitename cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) "
    "sc-status sc-substatus sc-win32-status",
}
FIELD_COLUMN = {
    "s-sitename": SITE, "s-ip": SIP, "cs-method": METHOD, "cs-uri-stem": STEM, "cs-uri-query": QUERY, "s-port": PORT,
    "cs-username": USER, "c-ip": CIP, "cs(user-agent)": AGENT, "cs(referer)": REFERER, "cs-host": HOST,
    "sc-status": STATUS, "sc-substatus": SUBSTATUS, "sc-win32-status": WIN32, "sc-bytes": SCBYTES, "cs-bytes": CSBYTES,
    "time-taken": TAKEN,
}  # fmt: skip
VIEW_COLUMNS = {SITE: "sSiteName", SIP: "sIP", METHOD: "csMethod", STEM: "csUriStem", QUERY: "csUriQuery", PORT: "sPort",
                USER: "csUserName", CIP: "cIP", AGENT: "csUserAgent", STATUS: "scStatus", SUBSTATUS: "scSubStatus",
                WIN32: "scWin32Status"}  # fmt: skip


def iis_text(value: Any) -> str:
    """A value as an IIS log writes it: "-" for nothing, '+' for a space, no control characters."""
    if value is None or value == "":
        return "-"
    text = str(value).replace(" ", "+")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text


def iis_entry(row: Row, fields: list[str], seconds: int, zero_padded: bool = False) -> tuple[str, dict[str, Any]]:
    """The entry's text under #Fields, and the row the IIS source should read from it (for the anchor)."""
    moment = EPOCH + timedelta(seconds=seconds)
    values: list[str] = []
    view: dict[str, Any] = {"TimeGenerated": canonical_time(seconds * 1_000_000), "Computer": IIS_COMPUTER}
    for name in VIEW_COLUMNS.values():
        view[name] = None if name == "sPort" else ""
    for name in fields:
        key = name.lower()
        if key == "date":
            values.append(f"{moment:%Y-%m-%d}")
        elif key == "time":
            values.append(f"{moment:%H:%M:%S}")
        elif key == "s-computername":
            values.append(iis_text(str(row[COMPUTER]).split(".")[0].upper()))
        elif key == "cs-version":
            values.append("HTTP/1.1")
        elif key == "cs(cookie)":
            values.append("-")
        else:
            index = FIELD_COLUMN[key]
            text = iis_text(row[index] if index != PORT or row[index] is None or row[index] >= 0 else None)
            if index == PORT and zero_padded and text != "-" and int(text) < 10_000:
                text = f"{int(text):05d}"
            values.append(text)
            if index in VIEW_COLUMNS:
                view[VIEW_COLUMNS[index]] = (None if text == "-" else int(text)) if index == PORT else text
    return " ".join(values), view


def _header(moment_seconds: int, fields: str) -> str:
    moment = EPOCH + timedelta(seconds=moment_seconds)
    return (
        "#Software: Microsoft Internet Information Services 10.0\r\n#Version: 1.0\r\n"
        f"#Date: {moment:%Y-%m-%d %H:%M:%S}\r\n#Fields: {fields}\r\n"
    )


def write_iis(day: Day, folder: Path, anchor: Path, rng: random.Random) -> tuple[int, int]:
    """The IIS folder and the anchor's rows for it. Returns (rows in the window, malformed entries)."""
    files: dict[tuple[str, str], list[tuple[int, Row]]] = {}
    for row in day.rows:
        seconds = FORMS[row[FORM]](row[T])[1] // 1_000_000
        site = row[SITE] if str(row[SITE]).startswith("W3SVC") else f"W3SVC{1 + sum(map(ord, str(row[COMPUTER]))) % 12}"
        if row[COMPUTER] == IIS_ONLY:
            site = "W3SVC1"
        day_name = f"{EPOCH + timedelta(seconds=seconds):%y%m%d}"
        if 0 <= seconds - DAY_START // SECOND < 120:
            day_name = "261123"  # local-time rollover: the first minutes of the day in the day before's file
        files.setdefault((site, day_name), []).append((seconds, row))
    extra_lines: dict[str, list[str]] = {"before": [], "end": []}
    inside = bad = 0
    with anchor.open("w", encoding="utf-8") as views:
        for (site, day_name), entries in sorted(files.items()):
            entries.sort(key=lambda e: e[0])
            number = int(site[5:])
            path = folder / site / f"u_ex{day_name}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            main = "full" if number == 1 else ("default", "reordered", "full")[number % 3]
            if number == 1:
                sizes = (60_000, 250_000)
            elif number <= 4:
                sizes = (200, 5_000)
            else:
                sizes = (1, 20)
            chunks: list[str] = []
            position = 0
            while position < len(entries):
                size = rng.randint(*sizes)
                block = entries[position : position + size]
                position += size
                layout = main
                roll = rng.random()
                one_date = block[0][0] // 86400 == block[-1][0] // 86400
                if number > 1 and roll < 0.05 and one_date:
                    layout = "nodate"
                elif number > 4 and roll < 0.07:
                    layout = "nosip"
                elif number > 1 and roll < 0.15:
                    layout = "full"
                fields = LAYOUTS[layout].split()
                chunks.append(_header(block[0][0], LAYOUTS[layout]))
                for seconds, row in block:
                    text, view = iis_entry(row, fields, seconds, zero_padded=number == 9)
                    chunks.append(text + "\r\n")
                    inside += in_window(seconds * 1_000_000)
                    views.write(json.dumps(view, ensure_ascii=False) + "\n")
                    if number == 1 and day_name == "261124" and row is block[0][1]:
                        planted_bad, planted_good = _plant_iis(day, fields, chunks, views, extra_lines)
                        bad, inside = bad + planted_bad, inside + planted_good
            if number == 1 and day_name == "261124":
                lead = chunks.index(next(c for c in chunks if c.startswith("#Software")))
                chunks[lead:lead] = extra_lines["before"]
                chunks.extend(extra_lines["end"])  # the last line, without its line break
            text = "".join(chunks)
            if number == 7:
                text = text.replace("\r\n", "\n")  # a site whose files have LF line ends
            with path.open("w", encoding="utf-8", newline="") as out:
                out.write(("\ufeff" if number == 3 else "") + text)
    ftp = folder / "MSFTPSVC1" / "u_ex261124.log"
    ftp.parent.mkdir(parents=True, exist_ok=True)
    with ftp.open("w", encoding="utf-8", newline="") as out:
        out.write(_header(DAY_START // SECOND + 3000, "date time c-ip cs-username s-ip s-port cs-method cs-uri-stem sc-status "
                          "sc-win32-status sc-substatus x-session x-fullpath"))  # fmt: skip
        for _, row in (item for item in day.iis_bad if item[0] == "ftp"):
            moment = utc(row[T])
            out.write(f"{moment:%Y-%m-%d %H:%M:%S} {row[CIP]} anonymous 10.0.0.4 {row[PORT]} USER anonymous 331 0 0 "
                      "3c1a2b4d-0000-0000-0000-000000000001 /\r\n")  # fmt: skip
    return inside, bad


def _plant_iis(day: Day, fields: list[str], chunks: list[str], views: Any, extra: dict[str, list[str]]) -> tuple[int, int]:
    """The IIS-only entries, once, into the single-header site's file (layout `full`): (malformed, valid) written."""
    if extra.get("done"):
        return 0, 0
    extra["done"] = ["yes"]
    bad = 0
    for kind, row in day.iis_bad:
        if kind == "ftp":
            continue
        seconds = row[T] // SECOND
        text, _ = iis_entry(row, fields, seconds)
        parts = text.split(" ")
        if kind == "field-too-many":
            parts.insert(10, "extra")
        elif kind == "port-word":
            parts[fields.index("s-port")] = "8o8o"
        elif kind == "time-invalid":
            parts[1] = "24:61:00"
        elif kind == "nul-inside":
            parts[fields.index("cs-uri-stem")] += "\x00"
        line = " ".join(parts)
        if kind == "before-fields":
            extra["before"].append(line + "\r\n")
        elif kind == "no-line-break":
            if extra["end"]:
                continue  # a file has one last line: the other copies are not written
            extra["end"].append(line)
        else:
            chunks.append(line + "\r\n")
        bad += 1
    for kind, row in day.iis_good_extra:
        text, view = iis_entry(row, fields, row[T] // SECOND)
        chunks.append(("\x00" * 37 + text if kind == "nul-padding" else text + "   ") + "\r\n")
        views.write(json.dumps(view, ensure_ascii=False) + "\n")
    return bad, len(day.iis_good_extra)


def write_day(rows: int, seed: int) -> Written:
    folder = DATA / f"heldout-{rows}"
    manifest_path = folder / "manifest.json"
    want = {"version": VERSION, "rows": rows, "seed": seed}
    if manifest_path.exists():
        known = json.loads(manifest_path.read_text(encoding="utf-8"))
        if {k: known.get(k) for k in want} == want:
            return Written(folder, known)
    print(f"generating {folder} ...")
    started = time.perf_counter()
    manifest_path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    day = Generator(rows, seed).generate()
    rng = random.Random(seed + 1)
    manifest: dict[str, Any] = dict(want)
    manifest["rows_good"] = sum(1 for r in day.rows if r[COMPUTER] != IIS_ONLY)
    manifest["bad_jsonl"] = write_jsonl(_json_day(day), folder / "rows.jsonl", rng)
    manifest["bad_array"] = write_array(_json_day(day), folder / "array.json", rng)
    manifest["bad_response"] = write_response(_json_day(day), folder / "response.json", rng)
    manifest["bad_response_pretty"] = write_response(_json_day(day), folder / "response-pretty.json", rng, pretty=True)
    # One malformed key value (a port "http", a time "yesterday") sends a whole response or array to the plain
    # read; these copies hold only the malformed records their first pass reads through, so it is checked too.
    clean = Day(_json_day(day).rows, [(kind, payload) for kind, payload in day.bad if kind in FAST_SAFE])
    manifest["bad_response_clean"] = write_response(clean, folder / "response-clean.json", rng)
    manifest["bad_array_clean"] = write_array(clean, folder / "array-clean.json", rng)
    manifest["rows_in_window"] = write_anchor(day, folder / "anchor.jsonl")
    iis = folder / "iis"
    if iis.exists():
        for path in sorted(iis.rglob("*.log")):
            path.unlink()
    manifest["iis_rows_in_window"], manifest["bad_iis"] = write_iis(day, iis, folder / "anchor-iis.jsonl", rng)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    manifest["bytes"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    print(f"  written in {manifest['seconds']} s")
    return Written(folder, manifest)


def _json_day(day: Day) -> Day:
    """The day the JSON shapes hold: without the IIS-only rows."""
    return Day([r for r in day.rows if r[COMPUTER] != IIS_ONLY], day.bad)


# ---- running ---------------------------------------------------------------------------------------------
def timed(command: list[str], timeout: float) -> tuple[Figures, str]:
    """Run a child: its figures (wall, own peak RSS via wait4) and its stderr."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace")
    figures = Figures(wall, usage.ru_maxrss / 1024, usage.ru_utime, usage.ru_stime, load, wall >= timeout)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(command)}\n{text[-3000:]}")
    return figures, text


def duck(jsonl: Path, out: Path, timeout: float, computer: str | None = None) -> tuple[Figures, list[dict[str, Any]]]:
    command = [sys.executable, str(HERE / "duckdb_anchor.py"), str(jsonl), START, END, str(out)]
    if computer:
        command += ["--computer", computer]
    figures, _ = timed(command, timeout)
    return figures, json.loads(out.read_text(encoding="utf-8"))


def run_ours(
    source: str, out: Path, timeout: float, computer: str = "", plain: bool = False
) -> tuple[Figures, list[dict[str, Any]], dict[str, Any]]:
    out.unlink(missing_ok=True)
    entry = [str(HERE / "plain_run.py")] if plain else ["-m", "detector", "run", "--summary-json"]
    command = [sys.executable, *entry, "--source", source, "--rule", PORT_RULE, "--start", START, "--end", END]
    command += ["--sink", f"jsonl:{out}"]
    if computer:
        command += ["--computer", computer]
    figures, stderr = timed(command, timeout)
    summary: dict[str, Any] = {}
    for line in reversed(stderr.splitlines()):
        if line.startswith("{"):
            summary = json.loads(line)
            break
    with out.open(encoding="utf-8") as handle:
        found = [json.loads(line) for line in handle if line.strip()]
    return figures, found, summary


def _repro(got: list[dict[str, Any]], want: list[dict[str, Any]], folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-ours.json").write_text(json.dumps(got, indent=1, ensure_ascii=False), encoding="utf-8")
    (folder / f"{name}-duckdb.json").write_text(json.dumps(want, indent=1, ensure_ascii=False), encoding="utf-8")


def generated(rows: int, seed: int) -> Written:
    """The day, written by a child process when it is not on disk yet.

    Not in this process: a child's ru_maxrss (os.wait4) counts this process's peak RSS too (subprocess
    starts children with vfork, and exec keeps the old memory's high-water mark), so the measuring
    process must never have held the day.
    """
    manifest = DATA / f"heldout-{rows}" / "manifest.json"
    want = {"version": VERSION, "rows": rows, "seed": seed}
    if manifest.exists() and {k: json.loads(manifest.read_text(encoding="utf-8")).get(k) for k in want} == want:
        return Written(manifest.parent, json.loads(manifest.read_text(encoding="utf-8")))
    subprocess.run([sys.executable, __file__, "--rows", str(rows), "--seed", str(seed), "--generate-only"], check=True)
    return Written(manifest.parent, json.loads(manifest.read_text(encoding="utf-8")))


def check(args: argparse.Namespace) -> int:
    day = generated(args.rows, args.seed)
    m = day.manifest
    print(f"data: {day.folder} ({', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in m['bytes'].items())})")
    print(f"  {m['rows_good']:,} good JSON rows ({m['rows_in_window']:,} in the window); malformed: JSON Lines "
          f"{m['bad_jsonl']}, array {m['bad_array']}, responses {m['bad_response']}, IIS {m['bad_iis']} "
          "(+ an FTP log)")  # fmt: skip
    failures: list[str] = []
    timeout = args.timeout
    with tempfile.TemporaryDirectory(prefix="heldout-") as scratch:
        work = Path(scratch)
        base, want = duck(day.path("anchor.jsonl"), work / "duck.json", timeout)
        iis_base, iis_want = duck(day.path("anchor-iis.jsonl"), work / "duck-iis.json", timeout, IIS_COMPUTER)
        thirty, no_cip = sum(1 for f in want if f["portCount"] == 30), sum(1 for f in want if f["cIP"] == "")
        print(f"  duckdb on anchor.jsonl       {base.text()}; {len(want)} findings ({thirty} of exactly 30 ports, "
              f'{no_cip} with cIP "")')  # fmt: skip
        print(f"  duckdb on anchor-iis.jsonl   {iis_base.text()}; {len(iis_want)} findings")
        runs: list[tuple[str, str, str, bool, Figures, list[dict[str, Any]], int]] = [
            ("canonical", f"file:{day.path('anchor.jsonl')}", "", False, base, want, m["rows_in_window"])
        ]
        shapes = (("jsonl", "rows.jsonl"), ("response", "response.json"), ("response-pretty", "response-pretty.json"),
                  ("response-clean", "response-clean.json"), ("array", "array.json"),
                  ("array-clean", "array-clean.json"))  # fmt: skip
        for shape, name in shapes:
            plains = (False, True) if args.plain_all or shape == "jsonl" else (False,)
            runs += [(shape, f"file:{day.path(name)}", "", p, base, want, m["rows_in_window"]) for p in plains]
        runs += [
            ("iis", f"iis:{day.path('iis')}", IIS_COMPUTER, p, iis_base, iis_want, m["iis_rows_in_window"]) for p in (False, True)
        ]
        for shape, source, computer, plain, anchor_figures, expected, inside in runs:
            label = f"{'plain' if plain else 'ours'} {shape}"
            try:
                figures, got, summary = run_ours(source, work / "ours.jsonl", timeout, computer, plain)
            except RuntimeError as exc:
                failures.append(f"{label}: {exc}")
                print(f"  {label:<28} FAILED: {str(exc)[:400]}")
                continue
            problem = differences(got, expected)
            ratio = figures.wall_s / anchor_figures.wall_s
            counts = (
                f"; rowsRead {summary.get('rowsRead')} (planted {inside}), skippedLines {summary.get('skippedLines')}"
                if summary
                else ""
            )
            verdict = f"MISMATCH: {problem}" if problem else f"{len(got)} findings identical to DuckDB's"
            print(f"  {label:<28} {figures.text()}, {ratio:.2f}x DuckDB, load {figures.load_before:.1f}; {verdict}{counts}")
            if problem:
                failures.append(f"{label}: {problem}")
                _repro(got, expected, day.folder / "mismatch", label.replace(" ", "-"))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  (this process's peak RSS, a floor under every child's figure: {own:.0f} MB)")
    if failures:
        print("\nMISMATCHES (findings saved under", day.folder / "mismatch", "):")
        for failure in failures:
            print("  " + failure)
        return 1
    print("\nevery shape and path gave DuckDB's findings")
    return 0


# ---- the probe: each malformed kind alone, against its control -------------------------------------------
def probe(args: argparse.Namespace) -> int:
    """For each planted malformed kind: a 29-port group plus the bad record carrying port 30, and the same
    with a good record instead (the control, which must fire), read by ours and by the plain path."""
    gen = Generator(1000, args.seed)
    folder = DATA / "heldout-probe"
    folder.mkdir(parents=True, exist_ok=True)
    server = gen.servers[1]
    cases: list[tuple[str, str, str, int]] = []  # (name, source, computer, expected findings)

    def group(n: int) -> tuple[list[Row], Row]:
        ports = list(range(1000 + n * 40, 1000 + n * 40 + 30))
        b = DAY_START + 60 * BIN
        good = [
            gen.row(b + k * SECOND, f"203.0.113.{n % 250}", server, server.sips[0], p, form=Z7) for k, p in enumerate(ports[:29])
        ]
        return good, gen.row(b + 100 * SECOND, f"203.0.113.{n % 250}", server, server.sips[0], ports[29], form=Z7)

    def write(name: str, text: str) -> Path:
        path = folder / name
        path.write_text(text, encoding="utf-8", newline="")
        return path

    kinds = [*DICT_DEFECTS, *LINE_DEFECTS, "array:number", "array:list", "array:null", "response:object", "response:short",
             "response:long"]  # fmt: skip
    for n, kind in enumerate(kinds):
        good, last = group(n)
        obj = raw_object(last, 0, full=True)
        payload: Any = (
            DICT_DEFECTS[kind](obj) if kind in DICT_DEFECTS else LINE_DEFECTS[kind](obj) if kind in LINE_DEFECTS else obj
        )
        lines = [json.dumps(raw_object(r, 0, full=True)) for r in good]
        names = [name for name, _ in LA_COLUMNS]
        rows = [json.dumps([raw_object(r, 0, full=True)[c] for c in names]) for r in good]
        shapes = []
        if (bad := jsonl_bad_line(kind, payload)) is not None:
            shapes.append(("jsonl", "\r\n".join([*lines, bad, json.dumps(obj)]) + "\r\n", "\r\n".join([*lines, bad]) + "\r\n"))
        if (bad := array_bad_element(kind, payload)) is not None:
            ok = json.dumps({**obj, "TableName": "PrimaryResult"})
            shapes.append(("array", "[" + ",".join([*lines, bad, ok]) + "]", "[" + ",".join([*lines, bad]) + "]"))
        if (bad := response_bad_row(kind, payload)) is not None:
            head = '{"tables":[{"name":"PrimaryResult","columns":' + json.dumps([{"name": c, "type": t} for c, t in LA_COLUMNS])
            ok = json.dumps([obj[c] for c in names])
            shapes.append(
                (
                    "response",
                    head + ',"rows":[' + ",".join([*rows, bad, ok]) + "]}]}",
                    head + ',"rows":[' + ",".join([*rows, bad]) + "]}]}",
                )
            )
        for shape, control, bad_only in shapes:
            cases.append((f"{kind} in {shape}, control", f"file:{write(f'{n}-{shape}-control.json', control)}", "", 1))
            cases.append((f"{kind} in {shape}", f"file:{write(f'{n}-{shape}.json', bad_only)}", "", 0))
    full = LAYOUTS["full"].split()
    for n, kind in enumerate((*IIS_DEFECTS, "nul-padding", "trailing-spaces"), start=len(kinds)):
        good, last = group(n)
        body = "".join(iis_entry(r, full, r[T] // SECOND)[0] + "\r\n" for r in good)
        text, _ = iis_entry(last, full, last[T] // SECOND)
        parts = text.split(" ")
        header = _header(good[0][T] // SECOND, LAYOUTS["full"])
        expected = 0
        if kind == "field-too-many":
            parts.insert(10, "extra")
        elif kind == "port-word":
            parts[full.index("s-port")] = "8o8o"
        elif kind == "time-invalid":
            parts[1] = "24:61:00"
        elif kind == "nul-inside":
            parts[full.index("cs-uri-stem")] += "\x00"
        line = " ".join(parts)
        if kind == "before-fields":
            content = line + "\r\n" + header + body
        elif kind == "no-line-break":
            content = header + body + line
        elif kind == "nul-padding":
            content, expected = header + body + "\x00" * 37 + line + "\r\n", 1
        elif kind == "trailing-spaces":
            content, expected = header + body + line + "   \r\n", 1
        else:
            content = header + body + line + "\r\n"
        site = folder / f"iis-{kind}" / "W3SVC1"
        site.mkdir(parents=True, exist_ok=True)
        (site / "u_ex261124.log").write_text(content, encoding="utf-8", newline="")
        cases.append((f"IIS {kind}", f"iis:{site.parent}", IIS_COMPUTER, expected))
    odd = 0
    with tempfile.TemporaryDirectory(prefix="heldout-probe-") as scratch:
        out = Path(scratch) / "out.jsonl"
        for name, source, computer, expected in cases:
            results = []
            for plain in (False, True):
                try:
                    _, found, summary = run_ours(source, out, args.timeout, computer, plain)
                    results.append(
                        f"{len(found)} findings" + (f", skippedLines {summary.get('skippedLines')}" if summary else "")
                    )
                    odd += len(found) != expected
                except RuntimeError as exc:
                    results.append(f"ERROR {str(exc).splitlines()[-1][:120]}")
                    odd += 1
            mark = "ok  " if all(r.startswith(f"{expected} findings") for r in results) else "ODD "
            print(f"  {mark} {name:<42} want {expected}: ours {results[0]}; plain {results[1]}")
    print(f"\n{len(cases)} cases, {odd} runs not as expected; files under {folder}")
    return 1 if odd else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--plain-all", action="store_true", help="the plain path on the response and array shapes too")
    parser.add_argument("--probe", action="store_true", help="run each malformed kind alone instead")
    parser.add_argument("--generate-only", action="store_true", help="write the day and stop")
    args = parser.parse_args(argv)
    if args.generate_only:
        write_day(args.rows, args.seed)
        return 0
    return probe(args) if args.probe else check(args)


if __name__ == "__main__":
    raise SystemExit(main())
