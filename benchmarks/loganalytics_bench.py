"""Two-step against raw reads from Log Analytics, over a generated day of W3CIISLog rows.

    python benchmarks/loganalytics_bench.py [--rows 1000000]

Generates the day if missing (benchmarks/generate.py, the generator of every benchmark; benchmarks/data/
is gitignored), loads its rows into the fake Log Analytics query API (tests/fakes/loganalytics.py:
duckdb-kql over DuckDB, HTTPS, gzip), and runs the real source with the real SDK and managed-identity
credential against it in both modes. Prints requests (the window's, by kind), bytes received (gzip on
the wire, and the JSON before compression) and wall time, checks that both modes give findings identical
(every column, in order) to the DuckDB anchor's over the same rows (benchmarks/duckdb_anchor.py), that
rowsRead counts the window's rows with no request of its own, and checks the goal: two-step receives at
most 2% of raw's bytes in at most 10 requests.

Wall time is dominated by the fake (duckdb-kql translation, JSON encoding in Python), not by the
source; on a real workspace the server-side work is Kusto's. Bytes and requests are what transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.duckdb_anchor import run as run_anchor  # noqa: E402
from benchmarks.generate import DAY, END, START, write_day  # noqa: E402
from detector.config import LogAnalyticsSettings  # noqa: E402
from detector.kql import format_datetime  # noqa: E402
from detector.logic.high_port_count import OUTPUT_COLUMNS  # noqa: E402
from detector.models import Window  # noqa: E402
from detector.rules import load_rules  # noqa: E402
from detector.runner import evaluate_window  # noqa: E402
from detector.sources.kql_query import time_filter  # noqa: E402
from detector.sources.loganalytics import LogAnalyticsSource  # noqa: E402
from tests.fakes.identity import IDENTITY_HEADER, IdentityHandler  # noqa: E402
from tests.fakes.loganalytics import LogAnalyticsFake, serve_log_analytics  # noqa: E402
from tests.fakes.server import serve  # noqa: E402
from tests.fakes.tls import make_pki  # noqa: E402

WORKSPACE = "0b0e5c4e-5f6a-4f1e-9d55-2a1f44a555d8"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
ROWS_READ_ONLY = "rows read only"


def request_kind(query: str) -> str:
    """What a query the source sent is for, read from its text (the source's KQL builders' shapes)."""
    if "| union (" in query:
        return "candidates+rowsRead"
    if query.rstrip().endswith("| summarize total = count()"):
        return ROWS_READ_ONLY  # a query sent only to count the window's rows (what the source once did)
    if "total = count() by" in query:
        return "bin counts+rowsRead"
    return "candidates" if "| summarize" in query else "rows"


def run_mode(fake: LogAnalyticsFake, endpoint: str, mode: str) -> dict[str, Any]:
    rule = load_rules("44a555d8-ecee-4a25-95ce-055879b4b14b")[0]
    window = Window(DAY, DAY + timedelta(days=1))
    source = LogAnalyticsSource(WORKSPACE, LogAnalyticsSettings(endpoint=endpoint, mode=mode, client_id=CLIENT_ID))
    fake.reset_counters()
    started = time.perf_counter()
    run = evaluate_window(rule, source, window)
    seconds = time.perf_counter() - started
    kinds: dict[str, int] = {}
    for record in fake.requests:
        kinds[request_kind(record.query)] = kinds.get(request_kind(record.query), 0) + 1
    return {
        "mode": mode,
        "requests": len(fake.requests),
        "kinds": kinds,
        "rows_read": run.source_stats["rowsRead"],
        "partial_answers": sum(r.partial for r in fake.requests),
        "wire_bytes": fake.wire_bytes,
        "client_bytes": source.stats.bytes_received,
        "json_bytes": fake.body_bytes,
        "rows_received": source.stats.rows,
        "rows_evaluated": run.rows_evaluated,
        "seconds": seconds,
        "findings": [f.to_json() for f in run.findings],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Log Analytics source: two-step vs raw")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the generated day (default 1,000,000)")
    args = parser.parse_args()

    path = write_day(args.rows).shuffled  # a workspace keeps rows in no particular order
    expected = [[row[c] for c in OUTPUT_COLUMNS] for row in run_anchor(path, START, END, None)]

    fake = LogAnalyticsFake(WORKSPACE)
    started = time.perf_counter()
    loaded = fake.load_jsonl(path)
    print(f"loaded {loaded:,} rows into the fake in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    in_window = int(fake.run(f"W3CIISLog | where {time_filter(DAY, DAY + timedelta(days=1))} | count", None)[1][0][0])

    with tempfile.TemporaryDirectory() as folder, serve(IdentityHandler) as identity:
        pki = make_pki(Path(folder))
        # What App Service gives a function app with a managed identity; TLS verified against the test CA.
        os.environ.update(
            IDENTITY_ENDPOINT=f"{identity.url}/msi/token", IDENTITY_HEADER=IDENTITY_HEADER, REQUESTS_CA_BUNDLE=str(pki.ca_cert)
        )
        with serve_log_analytics(pki, fake) as server:
            results = [run_mode(fake, server.url, mode) for mode in ("two-step", "raw")]

    two_step, raw = results
    print(f"\n{args.rows:,} rows, window {format_datetime(DAY)} + 1d\n")
    header = f"{'mode':<9} {'requests':>8} {'wire bytes':>13} {'JSON bytes':>13} {'rows recv':>10} {'seconds':>8} {'findings':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['mode']:<9} {r['requests']:>8} {r['wire_bytes']:>13,} {r['json_bytes']:>13,} {r['rows_received']:>10,} "
            f"{r['seconds']:>8.1f} {len(r['findings']):>8}"
        )
    wire_ratio = two_step["wire_bytes"] / raw["wire_bytes"]
    json_ratio = two_step["json_bytes"] / raw["json_bytes"]
    time_ratio = two_step["seconds"] / raw["seconds"]
    print(f"\ntwo-step / raw: wire bytes {wire_ratio:.3%}, JSON bytes {json_ratio:.3%}, time {time_ratio:.1%}")
    print(f"client-counted bytes (Content-Length): two-step {two_step['client_bytes']:,}, raw {raw['client_bytes']:,}")
    for r in results:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(r["kinds"].items()))
        print(f"{r['mode']}: {r['requests']} requests for the one window ({kinds}); rowsRead {r['rows_read']:,}")

    identical = json.dumps(two_step["findings"], sort_keys=True) == json.dumps(raw["findings"], sort_keys=True)
    found = [[f[c] for c in OUTPUT_COLUMNS] for f in raw["findings"]]
    checks = {
        "identical findings (two-step == raw)": identical,
        f"findings identical to DuckDB's ({len(expected)}, every column, in order)": found == expected,
        "two-step bytes <= 2% of raw (wire and JSON)": wire_ratio <= 0.02 and json_ratio <= 0.02,
        "two-step requests <= 10": two_step["requests"] <= 10,
        "no partial answers": not (two_step["partial_answers"] or raw["partial_answers"]),
        f"rowsRead == the window's {in_window:,} rows (both modes)": two_step["rows_read"] == raw["rows_read"] == in_window,
        "no request only for rowsRead": not any(ROWS_READ_ONLY in r["kinds"] for r in results),
    }
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
