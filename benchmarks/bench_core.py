"""The core benchmark: our CLI against DuckDB on the same day of W3CIISLog rows, in the same run.

    python benchmarks/bench_core.py                 # 1,000,000 and 4,000,000 rows
    python benchmarks/bench_core.py --rows 1000000 --repeat 3

For each day size (data made by generate.py, seeded, cached under benchmarks/data/):
1. the anchor: DuckDB running the rule as one SQL statement over the JSON Lines file (duckdb_anchor.py);
2. our CLI over the same JSON Lines file (`python -m detector run --source file:... --sink jsonl:...`),
   its findings checked equal to the anchor's before any figure is printed;
3. our CLI over the same rows as an IIS u_ex*.log (`--source iis:... --computer bench-iis`), checked
   against the anchor run with Computer replaced by bench-iis (what the IIS source does).
Every run is its own process; wall time is measured around it and peak RSS is the child's ru_maxrss
(os.wait4). Finally the cold `import function_app` time, best of several fresh processes.
Figures go to stdout and to benchmarks/data/results-<rows>.json. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from generate import DATA, write_day  # noqa: E402

from detector.logic.high_port_count import OUTPUT_COLUMNS  # noqa: E402

START, END = "2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"
COLUMNS = list(OUTPUT_COLUMNS)  # the rule's 18 output columns, compared one by one with the anchor's


def measure(command: list[str]) -> dict[str, float]:
    """Run a command as a child process: wall seconds and its own peak RSS in MB."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{stderr}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}


def anchor(jsonl: Path, out: Path, computer: str | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    command = [sys.executable, str(HERE / "duckdb_anchor.py"), str(jsonl), START, END, str(out)]
    if computer:
        command += ["--computer", computer]
    figures = measure(command)
    return figures, json.loads(out.read_text(encoding="utf-8"))


def ours(source: str, out: Path, computer: str = "") -> tuple[dict[str, float], list[dict[str, Any]]]:
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "detector",
        "run",
        "--source",
        source,
        "--start",
        START,
        "--end",
        END,
        "--sink",
        f"jsonl:{out}",
    ]
    if computer:
        command += ["--computer", computer]
    figures = measure(command)
    with out.open(encoding="utf-8") as handle:
        return figures, [json.loads(line) for line in handle if line.strip()]


def same_results(name: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Stop unless both result sets are equal column by column, in the same order."""
    got_rows = [[row[c] for c in COLUMNS] for row in got]
    want_rows = [[row[c] for c in COLUMNS] for row in want]
    if got_rows != want_rows:
        for index, (a, b) in enumerate(zip(got_rows, want_rows, strict=False)):
            if a != b:
                diff = [(c, x, y) for c, x, y in zip(COLUMNS, a, b, strict=True) if x != y]
                raise SystemExit(f"{name}: result {index} differs from DuckDB's: {diff[:3]}")
        raise SystemExit(f"{name}: {len(got_rows)} results, DuckDB has {len(want_rows)}")
    print(f"  {name}: {len(got_rows)} findings, identical to DuckDB's")


def import_time(tries: int = 7) -> dict[str, float]:
    """Cold `import function_app`: best of several fresh processes (import alone, and whole process)."""
    code = "import time; t = time.perf_counter(); import function_app; print(time.perf_counter() - t)"
    imports, walls = [], []
    for _ in range(tries):
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        walls.append(time.perf_counter() - started)
        imports.append(float(output))
    return {"import_s": min(imports), "process_wall_s": min(walls)}


def bench(rows: int, repeat: int) -> dict[str, Any]:
    jsonl, iis = write_day(rows)
    results: dict[str, Any] = {"rows": rows, "jsonl_bytes": jsonl.stat().st_size, "iis_bytes": iis.stat().st_size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)
        for attempt in range(repeat):
            duck, duck_results = anchor(jsonl, work / "duckdb.json")
            mine, my_results = ours(f"file:{jsonl}", work / "ours.jsonl")
            same_results(f"file: {rows} rows", my_results, duck_results)
            duck_iis, duck_iis_results = anchor(jsonl, work / "duckdb-iis.json", computer="bench-iis")
            mine_iis, my_iis_results = ours(f"iis:{iis.parent.parent}", work / "ours-iis.jsonl", computer="bench-iis")
            same_results(f"iis: {rows} rows", my_iis_results, duck_iis_results)
            run = {"duckdb": duck, "ours_jsonl": mine, "ours_iis": mine_iis, "duckdb_iis_check": duck_iis}
            results["runs"].append(run)
            print(
                f"  run {attempt + 1}: JSON Lines ours {mine['wall_s']:.2f} s / {mine['peak_rss_mb']:.0f} MB, "
                f"DuckDB {duck['wall_s']:.2f} s / {duck['peak_rss_mb']:.0f} MB, "
                f"ratio {mine['wall_s'] / duck['wall_s']:.2f}x wall, {mine['peak_rss_mb'] / duck['peak_rss_mb']:.2f}x RSS; "
                f"{rows / mine['wall_s']:,.0f} rows/s | IIS ours {mine_iis['wall_s']:.2f} s / {mine_iis['peak_rss_mb']:.0f} MB, "
                f"{rows / mine_iis['wall_s']:,.0f} rows/s"
            )
    best = min(results["runs"], key=lambda r: r["ours_jsonl"]["wall_s"])
    results["summary"] = {
        "ours_jsonl_wall_s": min(r["ours_jsonl"]["wall_s"] for r in results["runs"]),
        "duckdb_wall_s": min(r["duckdb"]["wall_s"] for r in results["runs"]),
        "ours_jsonl_peak_rss_mb": max(r["ours_jsonl"]["peak_rss_mb"] for r in results["runs"]),
        "duckdb_peak_rss_mb": max(r["duckdb"]["peak_rss_mb"] for r in results["runs"]),
        "ours_iis_wall_s": min(r["ours_iis"]["wall_s"] for r in results["runs"]),
        "ours_iis_peak_rss_mb": max(r["ours_iis"]["peak_rss_mb"] for r in results["runs"]),
        "wall_ratio_by_run": [r["ours_jsonl"]["wall_s"] / r["duckdb"]["wall_s"] for r in results["runs"]],
        "best_run": best,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="rows per day (repeatable); default 1000000 and 4000000")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (figures: best wall, worst RSS)")
    args = parser.parse_args()
    sizes = args.rows or [1_000_000, 4_000_000]
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "sizes": []}
    for rows in sizes:
        print(f"{rows:,} rows")
        report["sizes"].append(bench(rows, args.repeat))
    report["import_function_app"] = import_time()
    print(f"cold import function_app: {report['import_function_app']['import_s']:.3f} s "
          f"(whole process {report['import_function_app']['process_wall_s']:.3f} s), best of 7")  # fmt: skip
    print()
    print(
        "| rows | ours wall | DuckDB wall | ratio | ours peak RSS | DuckDB peak RSS | ours rows/s "
        "| IIS wall | IIS rows/s | IIS peak RSS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in report["sizes"]:
        s, rows = size["summary"], size["rows"]
        print(
            f"| {rows:,} | {s['ours_jsonl_wall_s']:.2f} s | {s['duckdb_wall_s']:.2f} s | "
            f"{s['ours_jsonl_wall_s'] / s['duckdb_wall_s']:.2f}x | {s['ours_jsonl_peak_rss_mb']:.0f} MB | "
            f"{s['duckdb_peak_rss_mb']:.0f} MB | {rows / s['ours_jsonl_wall_s']:,.0f} | {s['ours_iis_wall_s']:.2f} s | "
            f"{rows / s['ours_iis_wall_s']:,.0f} | {s['ours_iis_peak_rss_mb']:.0f} MB |"
        )
    if len(report["sizes"]) > 1:
        first, last = report["sizes"][0], report["sizes"][-1]
        growth = last["rows"] / first["rows"]
        wall = last["summary"]["ours_jsonl_wall_s"] / first["summary"]["ours_jsonl_wall_s"]
        rss = last["summary"]["ours_jsonl_peak_rss_mb"] / first["summary"]["ours_jsonl_peak_rss_mb"]
        print(f"\n{growth:.0f}x the rows: wall {wall:.2f}x, peak RSS {rss:.2f}x (JSON Lines)")
    out = DATA / f"results-{'-'.join(str(s) for s in sizes)}.json"
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nfull figures: {out}")


if __name__ == "__main__":
    main()
