"""A day of port scans: every group a candidate, the input the port rule exists for.

    python benchmarks/scan_day.py --rows 1000000          # writes benchmarks/data/scan-1000000/ once, then runs

The benchmark's day (generate.py) is background traffic with ~0.5 % of planted scanners, so the first
pass prunes nearly every row. Here every row is a scanner's: SCANNERS clients, each sweeping one server's
ports in a bin of its own (SCAN_PORTS ports in ten minutes), so every group reaches the threshold and
every row is a candidate the rule must be handed. Same columns, values and JSON form as generate.py's
ordered.jsonl (its `_json_line`), in time order (scan.jsonl) and shuffled (scan-shuffled.jsonl).

Runs, each as a child process (bench_core.measure: wall, peak RSS): DuckDB's statement on scan.jsonl (the
anchor), our CLI with the port rule on both files, and with every bundled rule on scan.jsonl (what the
function runs). Every result set of the port rule is checked identical to DuckDB's first; prints the
figures and each run's ratio to the anchor. No goal is checked here: it measures (docs/performance.md).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.bench_core import PORT_RULE, anchor, compiled, differences, ours  # noqa: E402
from benchmarks.generate import DATA, DAY, SERVERS, SITES, _json_line  # noqa: E402

SEED = 20261203
SCAN_PORTS = 400  # ports a scanner reaches in its bin: every group is far above the threshold (30)
BINS = 144  # ten-minute bins in the day
EVERY_RULE = str(Path(__file__).resolve().parent.parent / "rules")  # the bundled rules' folder


def write_scan_day(rows: int, folder: Path, seed: int = SEED) -> tuple[Path, Path]:
    """scan.jsonl (time order) and scan-shuffled.jsonl; written once per row count and seed."""
    ordered, shuffled = folder / "scan.jsonl", folder / "scan-shuffled.jsonl"
    done = folder / f"done-{seed}"
    if done.exists():
        return ordered, shuffled
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    iso = [f"{DAY:%Y-%m-%d}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86400)]
    lines: list[bytes] = []
    for scanner in range(rows // SCAN_PORTS + (rows % SCAN_PORTS > 0)):
        computer, sip = SERVERS[scanner % len(SERVERS)]
        start = scanner % BINS * 600  # each scanner in one bin; the bins fill up in turn
        client = f"45.{scanner // 65536 % 256}.{scanner // 256 % 256}.{scanner % 256}"
        ports = rng.sample(range(1, 65536), SCAN_PORTS)
        for port in ports[: min(SCAN_PORTS, rows - len(lines))]:
            second = start + rng.randrange(600)
            lines.append(_json_line((second, computer, SITES[0], sip, port, "GET", "/", "-", "-", client,
                                     "masscan/1.3", "404", "0", "2", rng.randrange(1, 50)), iso))  # fmt: skip
    lines.sort(key=lambda line: line[line.index(b'"TimeGenerated":"') + 17 :][:20])
    ordered.write_bytes(b"".join(lines))
    rng.shuffle(lines)
    shuffled.write_bytes(b"".join(lines))
    done.touch()
    return ordered, shuffled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--generate-only", action="store_true", help="write the day and stop")
    args = parser.parse_args()
    if args.generate_only:
        write_scan_day(args.rows, DATA / f"scan-{args.rows}")
        return 0
    # Written by a child: a child's peak RSS (wait4's ru_maxrss) counts the pages of the process it was
    # forked from, so this process must not have held the day's lines.
    subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--generate-only"], check=True)
    ordered, shuffled = write_scan_day(args.rows, DATA / f"scan-{args.rows}")
    compiled()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        anchor(ordered, work / "warm.json", args.timeout)  # the first run after the write pays for it: not counted
        base, want = anchor(ordered, work / "anchor.json", args.timeout)
        print(f"scan day, {args.rows:,} rows, {len(want)} findings; duckdb on scan.jsonl: {base.text()}")
        failed = False
        runs = (("ours, port rule, time order", ordered, PORT_RULE), ("ours, port rule, shuffled", shuffled, PORT_RULE),
                ("ours, every rule, time order", ordered, EVERY_RULE))  # fmt: skip
        for label, path, rules in runs:
            figures, got = ours(f"file:{path}", work / "ours.jsonl", args.timeout, rules=rules)
            problem = "timed out" if figures.timed_out else differences(got, want)
            failed |= bool(problem)
            verdict = f"MISMATCH: {problem}" if problem else "the port rule's findings are DuckDB's"
            print(f"  {label:<30} {figures.text()}, {figures.wall_s / base.wall_s:.2f}x DuckDB; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
